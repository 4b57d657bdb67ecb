"""Mixing two cases of a batch: CarveMix for segmentation, MixUp and CutMix for classification.

``BatchMixer(config, num_classes, seed)(image, target)`` mixes a training batch
on its device, after augmentation (``augment.mix``; off by default). Each
sample is mixed with probability ``augment.mix_prob`` with another sample of
the same batch (its partner, drawn uniformly among the others), read from the
batch as it came in:

- ``carvemix`` (segmentation; Zhang et al., "CarveMix", MICCAI 2021): the
  partner's labelled structures, dilated by a margin drawn from
  ``augment.carve_margin_vox`` (voxels, a cube), are carved out of the partner
  and pasted into the sample at the same place, image and label together. The
  labels stay hard class indices ``(B, 1, X, Y, Z)``.
- ``mixup`` (classification; Zhang et al., ICLR 2018): ``λ·x_i + (1 − λ)·x_j``
  with ``λ ~ Beta(α, α)``, ``α = augment.mix_alpha``.
- ``cutmix`` (classification; Yun et al., ICCV 2019): a box holding about
  ``1 − λ`` of the voxels (``λ ~ Beta(α, α)``, one edge ratio for all three
  axes) is copied from the partner; ``λ`` is then the share of voxels that
  stayed.

For classification the targets become soft: ``(B, K)`` float rows
``λ·e(y_i) + (1 − λ)·e(y_j)`` (one-hot ``e``; an unmixed sample keeps its
one-hot row), which ``cross_entropy`` accepts. The weight of each sample (the
share of its voxels, or of its intensity, that is its own) and its partner
are kept in ``last`` for inspection.

Random draws: one numpy stream spawned from the seed under its own key, so
turning mixing on does not change the augmentation's draws; every parameter is
drawn on the host, so a seed reproduces the mixing on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medvol.augment.config import MIXES, AugmentConfig, Seed
from medvol.augment.pipeline import STAGES, spawn_seed

__all__ = ["MIXES", "BatchMixer", "Mixed"]
#: Spawn key of the mixing stream (after the per-sample stages and the batched ones).
MIX_KEY = len(STAGES) + 1


@dataclass
class Mixed:
    """What the last call did, per sample: ``partner`` ``(B,)`` index (−1: not mixed) and
    ``weight`` ``(B,)``, the share of the result that is the sample's own (1 when not mixed)."""

    partner: np.ndarray
    weight: np.ndarray


class BatchMixer:
    """A seeded batch mixing: ``mixer(image, target) -> (image, target)``; see the module docstring."""

    def __init__(self, config: AugmentConfig, num_classes: int, seed: Seed) -> None:
        if config.mix not in MIXES:
            raise ValueError(f"augment.mix must be one of {', '.join(MIXES)}; got {config.mix!r}")
        self.config = config
        self.num_classes = num_classes
        self.last: Mixed | None = None
        self.reseed(seed)

    def reseed(self, seed: Seed) -> None:
        """Restart the stream from ``seed`` (an int or ``worker_seed(...)``)."""
        self._rng = np.random.default_rng(spawn_seed(seed, MIX_KEY))

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch.

        Args:
            image: ``(B, C, X, Y, Z)`` float.
            target: ``carvemix``: label maps ``(B, 1, X, Y, Z)`` integer; ``mixup``/``cutmix``:
                class indices ``(B,)`` or ``(B, 1)`` integer.

        Returns:
            New tensors: the mixed images, and label maps (``carvemix``) or soft targets ``(B, K)``.
        """
        n = len(image)
        partner = self.draw_partners(n)
        if self.config.mix == "carvemix":
            return self.carvemix(image, target, partner)
        if target.ndim == 2 and target.shape[1] == 1:
            target = target[:, 0]
        if image.ndim != 5 or target.shape != (n,):
            raise ValueError(
                f"{self.config.mix} expects images (B, C, X, Y, Z) and class indices (B,); got "
                f"{tuple(image.shape)} and {tuple(target.shape)}"
            )
        mixed = self.mixup(image, partner) if self.config.mix == "mixup" else self.cutmix(image, partner)
        return mixed, self.soft_targets(target, partner)

    def draw_partners(self, n: int) -> np.ndarray:
        """``(n,)``: each sample's partner, another sample of the batch, or −1 (not mixed)."""
        on = self._rng.random(n) < self.config.mix_prob
        partner = (np.arange(n) + self._rng.integers(1, max(n, 2), n)) % n
        return np.where(on & (n > 1), partner, -1)

    # -- segmentation ---------------------------------------------------------------------------

    def carvemix(
        self, image: torch.Tensor, label: torch.Tensor, partner: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Paste each partner's dilated foreground (image and label) into the sample."""
        if image.ndim != 5 or label.shape != (len(image), 1, *image.shape[2:]):
            raise ValueError(
                f"carvemix expects images (B, C, X, Y, Z) and label maps (B, 1, X, Y, Z); got "
                f"{tuple(image.shape)} and {tuple(label.shape)}"
            )
        margins = np.rint(self._rng.uniform(*self.config.carve_margin_vox, len(image))).astype(int)
        out_image, out_label = image.clone(), label.clone()
        weight = np.ones(len(image))
        for i in np.flatnonzero(partner >= 0):
            j = int(partner[i])
            region = carve_region(label[j, 0] > 0, int(margins[i]))
            out_image[i][:, region] = image[j][:, region]
            out_label[i][:, region] = label[j][:, region]
            weight[i] = 1.0 - float(region.float().mean())
        self.last = Mixed(partner, weight)
        return out_image, out_label

    # -- classification -------------------------------------------------------------------------

    def _lambdas(self, n: int) -> np.ndarray:
        alpha = self.config.mix_alpha
        return self._rng.beta(alpha, alpha, n)

    def mixup(self, image: torch.Tensor, partner: np.ndarray) -> torch.Tensor:
        """``λ·x_i + (1 − λ)·x_j`` for the mixed samples."""
        weight = np.where(partner >= 0, self._lambdas(len(image)), 1.0)
        self.last = Mixed(partner, weight)
        lam = torch.as_tensor(weight, dtype=image.dtype, device=image.device).view(-1, 1, 1, 1, 1)
        other = image[torch.as_tensor(np.where(partner >= 0, partner, np.arange(len(image))))]
        return lam * image + (1 - lam) * other

    def cutmix(self, image: torch.Tensor, partner: np.ndarray) -> torch.Tensor:
        """A box of about ``1 − λ`` of the voxels copied from the partner; ``λ`` set to the share kept."""
        shape = np.array(image.shape[2:])
        lambdas = self._lambdas(len(image))
        out, weight = image.clone(), np.ones(len(image))
        for i in range(len(image)):
            ratio = (1.0 - lambdas[i]) ** (1 / 3)
            size = np.rint(shape * ratio).astype(int)
            start = np.array([self._rng.integers(0, n - s + 1) for n, s in zip(shape, size, strict=True)])
            if partner[i] < 0:
                continue
            box = (slice(None), *(slice(a, a + s) for a, s in zip(start, size, strict=True)))
            out[i][box] = image[int(partner[i])][box]
            weight[i] = 1.0 - float(np.prod(size)) / float(np.prod(shape))
        self.last = Mixed(partner, weight)
        return out

    def soft_targets(self, target: torch.Tensor, partner: np.ndarray) -> torch.Tensor:
        """``(B, K)`` rows ``w·e(y_i) + (1 − w)·e(y_j)`` with the weights of ``last``."""
        assert self.last is not None
        if bool(((target < 0) | (target >= self.num_classes)).any()):
            raise ValueError(f"class indices must be in [0, {self.num_classes}); got {target.tolist()}")
        onehot = F.one_hot(target.long(), self.num_classes).float()
        other = onehot[torch.as_tensor(np.where(partner >= 0, partner, np.arange(len(target))))]
        w = torch.as_tensor(self.last.weight, dtype=torch.float32, device=target.device).view(-1, 1)
        return w * onehot + (1 - w) * other


def carve_region(foreground: torch.Tensor, margin_vox: int) -> torch.Tensor:
    """``foreground`` ``(X, Y, Z)`` bool dilated by ``margin_vox`` voxels (a cube): the region carved."""
    if margin_vox <= 0:
        return foreground
    size = 2 * margin_vox + 1
    grown = F.max_pool3d(foreground[None, None].float(), size, stride=1, padding=margin_vox)
    return grown[0, 0] > 0
