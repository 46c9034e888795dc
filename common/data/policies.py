"""data.auto_augment and data.random_erase for the in-memory loaders: torchvision.transforms.v2's policies
and RandomErasing, per sample, on a batch on the device.

Each sample's parameters are drawn by epoch position from augment_generator(seed, epoch) (`draw`), so
they depend neither on world size, rank nor resume. The policies (ta_wide, randaugment, autoaugment)
draw which ops and magnitudes each sample gets as torchvision's forward does, then apply torchvision's
own op (`_apply_image_or_video_transform`) once per group of samples with the same ops, so a chunk of
steps costs a few hundred small kernels, not one call per sample. AugMix mixes with per-image weights
and runs per sample, seeded, on the CPU; RandomErasing draws its box per sample, seeded, on the samples
its probability picks. The caller's RNG is untouched, and nothing waits on the device.
"""
from __future__ import annotations

import torch

from common.data.transforms import erase_boxes, policy

SEEDS = 2**62  # per-sample seeds, drawn like streaming's Seeded


class SampleAugment:
    """The per-sample policy (uint8, before normalisation) and random erasing (after), for an image shape."""

    def __init__(self, d, shape: tuple[int, int, int]):
        from torchvision.transforms import v2
        self.kind, self.shape = d.auto_augment, shape
        # torchvision's presets' policy, with the reference's bilinear interpolation (these images have no other key).
        self.policy = next(iter(policy(d, v2.InterpolationMode.BILINEAR)), None)
        self.erase_p = d.random_erase
        self.eraser = v2.RandomErasing(p=d.random_erase)  # its box; whether a sample is erased is drawn by position

    @staticmethod
    def wanted(d) -> bool:
        return d.auto_augment != "none" or d.random_erase > 0

    def draw(self, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        """The epoch's per-sample parameters, indexed by epoch position."""
        out = {}
        if self.kind in ("ta_wide", "randaugment", "autoaugment"):
            out["ops"] = getattr(self, "_draw_" + self.kind)(n, g)
        elif self.kind == "augmix":
            out["seeds"] = torch.randint(0, SEEDS, (n,), generator=g)
        if self.erase_p > 0:
            out["erase"] = torch.rand(n, generator=g) < self.erase_p
            out["erase_seeds"] = torch.randint(0, SEEDS, (n,), generator=g)
        return out

    # Per sample a row of integers: the draws of torchvision's forward (op index, magnitude bin, sign, ...).
    def _draw_ta_wide(self, n, g):
        p = self.policy
        return torch.stack([torch.randint(len(p._AUGMENTATION_SPACE), (n,), generator=g),
                            torch.randint(p.num_magnitude_bins, (n,), generator=g),
                            (torch.rand(n, generator=g) <= 0.5).long()], 1)

    def _draw_randaugment(self, n, g):
        cols = []
        for _ in range(self.policy.num_ops):
            cols += [torch.randint(len(self.policy._AUGMENTATION_SPACE), (n,), generator=g),
                     (torch.rand(n, generator=g) <= 0.5).long()]
        return torch.stack(cols, 1)

    def _draw_autoaugment(self, n, g):
        subs = self.policy._policies
        probs = torch.tensor([[op[1] for op in sub] for sub in subs])
        sub = torch.randint(len(subs), (n,), generator=g)
        cols = [sub]
        for j in range(2):
            cols += [(torch.rand(n, generator=g) <= probs[sub, j]).long(), (torch.rand(n, generator=g) <= 0.5).long()]
        return torch.stack(cols, 1)

    def _magnitude(self, op: str, index: int, bins: int, negative: bool) -> tuple[str, float]:
        fn, signed = self.policy._AUGMENTATION_SPACE[op]
        magnitudes = fn(bins, *self.shape[1:])
        magnitude = 0.0 if magnitudes is None else float(magnitudes[index])
        return op, -magnitude if signed and negative and magnitudes is not None else magnitude

    def ops(self, row: list[int]) -> tuple[tuple[str, float], ...]:
        """The (op, magnitude) sequence torchvision's forward applies for the draws `row`."""
        p, space = self.policy, list(self.policy._AUGMENTATION_SPACE)
        if self.kind == "ta_wide":
            return (self._magnitude(space[row[0]], row[1], p.num_magnitude_bins, bool(row[2])),)
        if self.kind == "randaugment":
            return tuple(self._magnitude(space[row[i]], p.magnitude, p.num_magnitude_bins, bool(row[i + 1]))
                         for i in range(0, len(row), 2))
        sub = p._policies[row[0]]
        return tuple(self._magnitude(sub[j][0], sub[j][2] or 0, 10, bool(row[2 + 2 * j]))
                     for j in range(2) if row[1 + 2 * j])

    def apply_policy(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The policy on uint8 images x [B, C, H, W], params indexed like x."""
        if self.policy is None:
            return x
        if "seeds" in params:  # AugMix, on the CPU: its Dirichlet draws would use the device's generator
            return _seeded(self.policy, x.cpu(), params["seeds"].tolist()).to(x.device, non_blocking=True)
        groups: dict[tuple, list[int]] = {}
        rows, inverse = torch.unique(params["ops"], dim=0, return_inverse=True)
        for k, row in enumerate(rows.tolist()):
            groups.setdefault(self.ops(row), []).append(k)
        out = x.clone()
        for ops, ks in groups.items():
            if not ops or all(op == "Identity" for op, _ in ops):
                continue
            # Indices found on the CPU, where the draws are: no device sync per group.
            sel = torch.isin(inverse, torch.tensor(ks)).nonzero().squeeze(1).to(x.device, non_blocking=True)
            y = x[sel]
            for op, magnitude in ops:
                y = self.policy._apply_image_or_video_transform(y, op, magnitude, interpolation=self.policy.interpolation,
                                                               fill=self.policy._fill)
            out[sel] = y
        return out

    def apply_erase(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """RandomErasing on normalised images x, on the samples drawn for it."""
        if self.erase_p <= 0:
            return x
        picked = params["erase"].nonzero().squeeze(1).tolist()
        if not picked:
            return x
        # The box is RandomErasing's draw under the sample's seed (on the CPU), applied on the device.
        shapes = torch.zeros(()).expand(*x.shape)  # make_params reads only the image size: no copy off the device
        drawn = _seeded(lambda image: self.eraser.make_params([image]), shapes, params["erase_seeds"].tolist(), picked)
        boxes = torch.zeros(len(x), 4, dtype=torch.long)  # empty boxes: not picked, or none fitted in ten tries
        for i, box in zip(picked, drawn):
            if box["v"] is not None:
                boxes[i] = torch.tensor([box["i"], box["j"], box["h"], box["w"]])
        return erase_boxes(x.clone(), boxes)

def _seeded(fn, x: torch.Tensor, seeds: list[int], rows: list[int] | None = None):
    """fn(x[i]) with torch's CPU generator seeded by seeds[i], for each row (all by default); the caller's RNG is
    untouched. Images come back stacked, anything else as a list."""
    with torch.random.fork_rng(devices=[]):
        out = []
        for i in range(len(x)) if rows is None else rows:
            torch.default_generator.manual_seed(seeds[i])  # not torch.manual_seed: it seeds every backend, 20x slower
            out.append(fn(x[i]))
    return torch.stack(out) if out and isinstance(out[0], torch.Tensor) else out
