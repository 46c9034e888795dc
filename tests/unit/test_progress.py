"""The console line's parts: clock, numbers, system metrics with units, the ETA and the epoch."""
import time
from types import SimpleNamespace as NS

from common.train.progress import Progress, clock, line, number, perf_text


def test_clock_numbers_and_units():
    assert clock(0) == "0:00:00" and clock(3725.4) == "1:02:05" and clock(100 * 3600) == "100:00:00"
    assert number(2.30258509) == "2.303" and number(52.98) == "52.98" and number(100.0) == "100"
    assert number(3e-4) == "3.00e-04" and number(0) == "0" and number(12345678.0) == "1.23e+07"
    one = perf_text({"samples_per_s": 9123.4, "samples_per_s_per_device": 9123.4, "step_time_s": 0.0142,
                     "data_wait_pct": 3.2, "peak_rss_gib": 1.2})
    assert one == "   9,123 img/s     14 ms/step  data wait   3%  peak rss 1.20 GiB", one
    two = perf_text({"samples_per_s": 9000.0, "samples_per_s_per_device": 4500.0, "step_time_s": 12.5,
                     "peak_alloc_gib": 10.0, "peak_reserved_gib": 12.0})
    assert two == "   9,000 img/s (4,500/device)   12.5 s/step  peak mem 10.00 GiB (reserved 12.00)", two


def test_a_line_groups_training_metrics_apart_from_system_metrics():
    text = line("val", 8, 16, "0.50", {"loss": 0.5, "acc1": 90.0, "samples_per_s": 10.0})
    assert text == "[val]   step  8/16 epoch 0.50 | loss 0.5       acc1 90 |       10 img/s", text


def test_eta_is_the_remaining_steps_at_the_pace_so_far_and_the_epoch_its_fraction():
    state = NS(step=10, epoch=0, batch_in_epoch=10)  # resumed at step 10 of 50, 20 steps an epoch
    p = Progress(False, 50, state, 20)
    p.t0 = time.perf_counter() - 10  # 10 s for the 10 steps since the resume: 30 steps left take 30 s
    state.step, state.epoch, state.batch_in_epoch = 20, 1, 0
    assert p.line("train", 20, {"loss": 1.0}) == "[train] step 20/50 epoch 1.00 | 0:00:10 elapsed  ETA 0:00:30 | loss 1"
    p.close()
