"""In-process checks: the Fréchet distance, the G step's frozen D, disk loaders' sharding, image mappings."""
import math

import pytest
import torch

from support.images import image_tree
from support.runs import ROOT, load_recipe

from common.config import BaseConfig
from common.cli import parse_cli
from common.data.datasets import synthetic
from common.data.sampling import TrainPlan, epoch_order
from common.metrics.fid import FeatureStats, Gaussian, Judge, frechet_distance
from common.data.files import list_images
from common.data.streaming import FolderEvalLoader, FolderTrainLoader, ImageFiles
from common.data.transforms import SquareCrop
from common.data.gan_data import edges, fit_size
from common.engines.base import unwrap
from common.train.runtime import runtime
from common.models.cnn import CNNConfig, small_cnn

RECIPES = ["gan_mnist", "cgan_mnist", "dcgan", "pix2pix"]




def debug_cli(mod, name, *overrides):
    return parse_cli(mod.Config, str(ROOT / "recipes" / f"{name}.py"),
                     ["--config", str(ROOT / "recipes" / "configs" / f"{name}_debug.yaml"), "device=cpu", *overrides])


# ----------------------------------------------------------------------------- Fréchet distance

def gaussian(x: torch.Tensor) -> Gaussian:
    x = x.double()
    return Gaussian(x.mean(0), torch.cov(x.T), len(x))


def test_frechet_distance_is_zero_for_identical_features_and_grows_with_a_known_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 16, generator=g, dtype=torch.float64) @ torch.randn(16, 16, generator=g, dtype=torch.float64)
    assert frechet_distance(gaussian(x), gaussian(x)) == pytest.approx(0.0, abs=1e-8)
    # Same covariance, mean moved by c: the distance is exactly ||c||^2.
    shifts = [0.5, 1.0, 2.0, 4.0]
    values = [frechet_distance(gaussian(x), gaussian(x + s)) for s in shifts]
    assert values == pytest.approx([16 * s * s for s in shifts], rel=1e-6)
    # Scaled copy: (1 - a)^2 (Tr C + ||mu||^2) for x -> a x.
    a, ref = 1.5, gaussian(x)
    expect = (1 - a) ** 2 * (ref.cov.trace() + ref.mean.square().sum())
    assert frechet_distance(ref, gaussian(a * x)) == pytest.approx(float(expect), rel=1e-6)


def test_frechet_distance_matches_the_closed_form_for_commuting_covariances():
    """C_a = Q diag(a) Q^T, C_b = Q diag(b) Q^T: FD = ||dmu||^2 + sum (sqrt a - sqrt b)^2."""
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    a, b = torch.rand(8, generator=g, dtype=torch.float64) + 0.1, torch.rand(8, generator=g, dtype=torch.float64) * 3
    mu_a, mu_b = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    fd = frechet_distance(Gaussian(mu_a, q @ torch.diag(a) @ q.T, 100), Gaussian(mu_b, q @ torch.diag(b) @ q.T, 100))
    assert fd == pytest.approx(float((mu_a - mu_b).square().sum() + (a.sqrt() - b.sqrt()).square().sum()), rel=1e-9)


def random_judge() -> Judge:
    torch.manual_seed(0)
    net = small_cnn(CNNConfig(channels=[8, 16], hidden=32, dropout=0.0), (1, 28, 28), 10)
    return Judge(net, (1, 28, 28), [0.5], [0.25], "random")


def test_feature_statistics_match_a_direct_computation_and_grow_with_an_image_shift():
    judge = random_judge()
    images = synthetic(600, [1, 28, 28], 10, "test")[0].float() / 127.5 - 1
    with runtime(BaseConfig(device="cpu")) as rt:
        def stats(x):
            acc = FeatureStats(judge)
            for chunk in x.split(128):  # sums over batches == statistics of the whole set
                acc.add(chunk)
            return acc.reduce(rt)
        real = stats(images)
        feats = judge(images)[0].double()
        torch.testing.assert_close(real.mean, feats.mean(0))
        torch.testing.assert_close(real.cov, torch.cov(feats.T))
        assert frechet_distance(real, stats(images.clone())) == pytest.approx(0.0, abs=1e-6)
        values = [frechet_distance(real, stats(images + s)) for s in (0.05, 0.1, 0.2, 0.4)]
        assert 0 < values[0] < values[1] < values[2] < values[3], values


def test_judge_undoes_the_padding_and_resizing_of_28px_data():
    judge = random_judge()
    smooth = torch.nn.functional.interpolate(torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0)),
                                             size=(20, 20), mode="bilinear")
    x = torch.nn.functional.pad(smooth * 255, (4, 4, 4, 4)).to(torch.uint8)  # dark border, like Fashion-MNIST
    tanh = lambda u8: u8.float() / 127.5 - 1  # noqa: E731
    native = judge.prepare(tanh(x))
    assert torch.equal(judge.prepare(tanh(fit_size(x, 32))), native)  # pad 2 -> crop 2: exact
    # 28 -> pad 32 -> resize 64 -> resize 32 -> crop 28: the same picture up to interpolation
    # blur, closer to the original than the original moved by one pixel.
    error = (judge.prepare(tanh(fit_size(x, 64))) - native).abs().mean()
    assert error < 0.1 * native.abs().mean()
    assert error < 0.6 * (judge.prepare(tanh(x.roll(1, -1))) - native).abs().mean()


# ----------------------------------------------------------------------------- the G step

@pytest.mark.parametrize("name", RECIPES)
def test_g_step_gives_the_discriminator_no_gradient(name):
    mod = load_recipe(name)
    cli = debug_cli(mod, name)
    with runtime(cli.cfg) as rt:
        loaders = mod.task.build_data(cli.cfg, rt)
        state = mod.task.build_state(cli.cfg, rt, loaders)
        calls = {}
        for net in ("G", "D"):
            for pname, p in unwrap(state.models[net]).named_parameters():
                p.register_hook(lambda grad, key=f"{net}.{pname}": calls.__setitem__(key, calls.get(key, 0) + 1))
        batch = next(iter(loaders.train))[0]
        with rt.micro_step(0, 1):
            out = mod.task.train_step(cli.cfg, batch, state, rt)
        rt.end_step()
        D = unwrap(state.models["D"])
        # Each D parameter got exactly one gradient (the D step), each G parameter one (the G step:
        # the D step's fakes are detached). A D gradient in the G step would make it two.
        assert calls and set(calls.values()) == {1}, {k: v for k, v in calls.items() if v != 1}
        assert len(calls) == sum(1 for _ in state.models["G"].parameters()) + sum(1 for _ in D.parameters())
        assert all(p.grad is None for p in D.parameters())  # zeroed by D's step, untouched since
        assert all(p.requires_grad for p in D.parameters())  # frozen() restored the flags
        assert math.isfinite(out["loss_g"].item()) and math.isfinite(out["loss_d"].item())
        if name == "gan_mnist":  # control: without frozen(), the same G loss does reach D
            fake = state.models["G"](torch.rand(4, cli.cfg.model.z_dim))
            state.models["D"](fake).mean().backward()
            assert all(p.grad is not None for p in D.parameters())


# ----------------------------------------------------------------------------- disk loaders

class Rank:
    """What the loaders read from a Runtime, for one rank of a world we do not start."""

    def __init__(self, rank, world):
        self.rank, self.world_size, self.is_main = rank, world, rank == 0
        self.device, self.memory_format = torch.device("cpu"), torch.contiguous_format


def decoded_ids(x):
    return ((x[:, 0, 0, 0] + 1) * 127.5).round().long().tolist()


def test_folder_loader_shards_like_the_in_memory_sampler_and_resumes_by_index(tmp_path):
    image_tree(tmp_path, 23, lambda split, i: torch.full((10, 10, 3), i, dtype=torch.uint8), classes=3,
               name="img{:03d}")  # image i is filled with value i
    files = list_images(tmp_path)
    ds = ImageFiles(tmp_path, files, [0] * len(files), SquareCrop(size=8, load_size=8))
    file_id = [int(f.split("img")[1][:3]) for f in files]
    loaders = [FolderTrainLoader(ds, Rank(r, 2), global_batch=8, accum=2, seed=3, drop_last=True, workers=0)
               for r in range(2)]
    loaders[0].set_epoch(1), loaders[1].set_epoch(1)
    steps = list(zip(*[[torch.cat([mb[0] for mb in step]) for step in ld] for ld in loaders]))
    plan, order = TrainPlan(23, 8, 2, True), epoch_order(23, 3, 1)
    assert len(steps) == plan.steps == 2
    for s, (x0, x1) in enumerate(steps):
        got = decoded_ids(x0) + decoded_ids(x1)  # rank 0's shard, then rank 1's
        assert got == [file_id[i] for i in order[s * 8:(s + 1) * 8]]
    # Resume at step 1: the same batch, reached by index arithmetic.
    loaders[0].set_epoch(1, start_step=1)
    (micro,) = [step for step in loaders[0]]
    assert decoded_ids(torch.cat([mb[0] for mb in micro])) == decoded_ids(steps[1][0])
    # Evaluation: every file exactly once across the ranks.
    seen = []
    for r in range(2):
        for x, _ in FolderEvalLoader(ds, Rank(r, 2), batch_size=6, workers=0):
            seen += decoded_ids(x)
    assert sorted(seen) == sorted(file_id)


def test_ab_pairs_split_into_channels_and_jitter_both_halves_alike(tmp_path):
    from PIL import Image
    yy, xx = torch.meshgrid(torch.arange(10), torch.arange(10), indexing="ij")
    pattern = (20 + 5 * xx + 3 * yy).to(torch.uint8)  # left half A; right half B = A + 100
    ab = torch.cat([pattern, pattern + 100], dim=1)[..., None].expand(-1, -1, 3)
    Image.fromarray(ab.numpy()).save(tmp_path / "0.png")
    for b_to_a in (False, True):
        ds = ImageFiles(tmp_path, ["0.png"], [0], SquareCrop(size=8, load_size=10, pairs=True, b_to_a=b_to_a))
        x, _ = ds[(0, (1, 2, True))]  # crop rows 1..8, cols 2..9, then flip
        assert x.shape == (6, 8, 8)
        a, b = x[:3].int(), x[3:].int()
        expect = pattern[1:9, 2:10].flip(1).int()
        inp, target = (expect + 100, expect) if b_to_a else (expect, expect + 100)
        assert (a - inp).abs().max() <= 1 and (b - target).abs().max() <= 1


def test_edges_outline_a_square():
    img = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    img[..., 8:24, 8:24] = 255
    e = edges(img)
    assert e.shape == img.shape and e[..., 8, 12:20].all() and not e[..., 16, 16] and not e[..., 0, 0]


def test_every_gan_yaml_loads_and_help_lists_the_eval_keys(capsys):
    for name in RECIPES:
        mod = load_recipe(name)
        for variant in (f"{name}.yaml", f"{name}_debug.yaml"):
            cli = parse_cli(mod.Config, str(ROOT / "recipes" / f"{name}.py"),
                            ["--config", str(ROOT / "recipes" / "configs" / variant)])
            assert cli.cfg.optim.name == "adam" and cli.cfg.optim.betas == [0.5, 0.999]
        with pytest.raises(SystemExit):
            parse_cli(mod.Config, str(ROOT / "recipes" / f"{name}.py"), ["--help"])
        text = capsys.readouterr().out
        assert "eval.classifier" in text and "eval.samples" in text and "model." in text
