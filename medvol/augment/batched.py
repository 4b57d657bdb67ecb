"""Augmentation of a whole batch at once, on the batch's device (CPU or GPU).

``BatchAugmenter(config, seed)(image, label)`` applies the stages of an
``AugmentConfig`` that batch naturally to ``image`` ``(B, C, X, Y, Z)`` float
and ``label`` ``(B, 1, X, Y, Z)`` integer (or ``None``, for classifiers):

1. spatial: flips, affine (rotation, scaling, shear, translation) and elastic
   displacement are composed into one sampling grid per sample and applied
   with ONE ``grid_sample`` per batch (images linear, labels nearest, so label
   values are kept exactly; voxels from outside the field of view are 0);
2. bias field, Gaussian blur, Gaussian and Rician noise, brightness,
   contrast, gamma: tensor operations on the samples that drew them.

It is the same augmentation as the per-sample ``Augmenter``: each random stage
makes one draw per sample with MONAI's distributions (the matrices are built
by MONAI's own ``create_rotate``/``create_shear``/``create_translate``/
``create_scale``, in ``AffineGrid``'s order), the draw is shared by image and
label, and the result agrees voxel-wise with MONAI's resampling of the same
matrix (``tests/test_augment_batched.py``). The k-space MR artefacts (motion,
ghosting, spike, Gibbs) stay per sample: ``sample_only_config`` gives the
``AugmentConfig`` the dataset still applies, before the batch is formed.

Coordinates: a matrix maps an output voxel's centred index ``c = o − (n − 1)/2``
(X, Y, Z order, voxels) to the input location it samples, as MONAI's do.
torch orders a 5-D tensor's axes (D, H, W) = (X, Y, Z) but a sampling grid's
last dimension (W, H, D) = (Z, Y, X); ``sampling_grid`` reverses it.
``align_corners=False`` throughout: normalised coordinate ``u = 2c/n``.

Random draws: per stage, one numpy stream spawned from the seed
(``reseed(worker_seed(seed, rank, 0, epoch))``); per-sample parameters are drawn
on the host (a few numbers per sample) and full-size fields (noise, elastic
offsets) by a ``torch.Generator`` on the batch's device seeded from the stage's
stream, so a seed reproduces its draws on a given device type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers.convutils import gaussian_1d
from monai.transforms.utils import create_rotate, create_scale, create_shear, create_translate

from medvol.augment.config import AugmentConfig, Seed
from medvol.augment.pipeline import STAGES, spawn_seed

__all__ = [
    "SAMPLE_ONLY",
    "BatchAugmenter",
    "resolve_where",
    "sample_only_config",
    "spatial_matrix",
]

#: Stages that only the per-sample path implements (k-space artefacts).
SAMPLE_ONLY = ("motion", "ghosting", "spike", "gibbs")
#: Spawn key under which the batched stages draw (apart from the per-sample ones).
BATCH_KEY = len(STAGES)
ELASTIC_TRUNCATE = 3.0  # MONAI Rand3DElastic smooths its offsets with GaussianFilter(sigma, truncated=3)
BLUR_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default, as the per-sample RandBlurd
GAMMA_EPSILON = 1e-7  # MONAI AdjustContrast


def sample_only_config(config: AugmentConfig) -> AugmentConfig | None:
    """The per-sample part of ``config`` in batch mode: the k-space artefacts only (``None``: none on)."""
    batched = [f.name for f in dataclasses.fields(config) if f.name.endswith("_prob")]
    kept = {f"{name}_prob" for name in SAMPLE_ONLY}
    off: dict[str, Any] = {name: 0.0 for name in batched if name not in kept}
    part = dataclasses.replace(config, **off)
    return part if any(getattr(part, name) > 0 for name in kept) else None


def resolve_where(config: AugmentConfig, device: torch.device, num_workers: int) -> str:
    """``config.where`` with ``auto`` decided: ``batch`` on a GPU or without loader workers, else
    ``sample`` (on a CPU, loader workers already augment in parallel with the model)."""
    if config.where != "auto":
        return config.where
    return "batch" if device.type != "cpu" or num_workers == 0 else "sample"


def spatial_matrix(
    rotate_rad: np.ndarray, shear: np.ndarray, translate_vox: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    """MONAI ``AffineGrid``'s 4×4 matrix: rotate @ shear @ translate @ scale (output → input, voxels)."""
    matrix = (
        create_rotate(3, rotate_rad.tolist())
        @ create_shear(3, shear.tolist())
        @ create_translate(3, translate_vox.tolist())
        @ create_scale(3, scale.tolist())
    )
    return np.asarray(matrix)


class BatchAugmenter:
    """A seeded batch augmentation: ``augmenter(image, label) -> (image, label)``."""

    def __init__(self, config: AugmentConfig, seed: Seed) -> None:
        self.config = config
        self.reseed(seed)

    def reseed(self, seed: Seed) -> None:
        """Restart every stage's stream from ``seed`` (an int or ``worker_seed(...)``)."""
        self._rng = {
            name: np.random.default_rng(spawn_seed(seed, BATCH_KEY, index))
            for index, name in enumerate(STAGES)
        }

    @torch.no_grad()
    def __call__(
        self, image: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment a batch; returns new tensors on the same device.

        Args:
            image: ``(B, C, X, Y, Z)`` float.
            label: ``(B, 1, X, Y, Z)`` integer label maps on the image's grid, or ``None``.
        """
        if image.ndim != 5 or (label is not None and label.shape[2:] != image.shape[2:]):
            raise ValueError(
                f"expected image (B, C, X, Y, Z) and label (B, 1, X, Y, Z) on its grid, got "
                f"{tuple(image.shape)} and {None if label is None else tuple(label.shape)}"
            )
        image = image.to(torch.float32, copy=True)  # augmented in place from here on
        image, label = self.spatial(image, label)
        return self.intensity(image), label

    # -- draws ----------------------------------------------------------------------------------

    def _on(self, stage: str, prob: float, n: int) -> np.ndarray:
        """Which of ``n`` samples the stage applies to: one Bernoulli(prob) draw each."""
        return self._rng[stage].random(n) < prob

    def _generator(self, stage: str, device: torch.device) -> torch.Generator:
        """A torch generator on ``device`` for this batch's full-size fields, seeded from the stage."""
        return torch.Generator(device=device).manual_seed(int(self._rng[stage].integers(2**63)))

    def draw_spatial(self, n: int) -> dict[str, np.ndarray]:
        """Per-sample spatial parameters: ``flip`` (n, 3) bool; ``affine`` (n,) bool with
        ``rotate`` (n, 3) rad, ``shear`` (n, 6), ``translate`` (n, 3) voxels, ``scale`` (n, 3);
        ``elastic`` (n,) bool with ``sigma`` (n,) voxels and ``magnitude`` (n,)."""
        c = self.config
        flip = np.zeros((n, 3), bool)
        if c.flip_prob > 0:
            for axis in sorted(set(c.flip_axes)):
                flip[:, axis] = self._on(f"flip_{'xyz'[axis]}", c.flip_prob, n)
        r = self._rng["affine"]
        affine = self._on("affine", c.affine_prob, n) if c.affine_prob > 0 else np.zeros(n, bool)
        params = {
            "flip": flip,
            "affine": affine,
            "rotate": r.uniform(-1, 1, (n, 3)) * np.radians(c.rotate_deg),
            "shear": r.uniform(-1, 1, (n, 6)) * c.shear_range,
            "translate": r.uniform(-1, 1, (n, 3)) * c.translate_vox,
            "scale": 1.0 + r.uniform(-1, 1, (n, 3)) * c.scale_range,
        }
        e = self._rng["elastic"]
        params["elastic"] = (
            self._on("elastic", c.elastic_prob, n) if c.elastic_prob > 0 else np.zeros(n, bool)
        )
        params["sigma"] = e.uniform(*c.elastic_sigma_vox, n)
        params["magnitude"] = e.uniform(*c.elastic_magnitude, n)
        return params

    # -- spatial --------------------------------------------------------------------------------

    def spatial(
        self, image: torch.Tensor, label: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Flips, affine and elastic displacement of the samples that drew any, in one resampling."""
        p = self.draw_spatial(len(image))
        moved = np.flatnonzero(p["flip"].any(1) | p["affine"] | p["elastic"])
        if not len(moved):
            return image, label
        matrices = np.stack([self._matrix(p, int(i)) for i in moved])
        x, y, z = image.shape[2:]
        shape = (x, y, z)
        displacement = None
        if p["elastic"][moved].any():
            generator = self._generator("elastic", image.device)
            displacement = elastic_displacement(
                p["elastic"][moved], p["sigma"][moved], p["magnitude"][moved], shape, image.device, generator
            )
        grid = sampling_grid(
            torch.as_tensor(matrices, dtype=torch.float32, device=image.device), shape, displacement
        )
        index = torch.as_tensor(moved, device=image.device)
        image[index] = F.grid_sample(image[index], grid, "bilinear", "zeros", align_corners=False)
        if label is not None:
            label = label.clone()
            warped = F.grid_sample(label[index].float(), grid, "nearest", "zeros", align_corners=False)
            label[index] = warped.round().to(label.dtype)
        return image, label

    def _matrix(self, p: dict[str, np.ndarray], i: int) -> np.ndarray:
        """Sample ``i``'s 4×4 output → input map: flip @ affine (the per-sample order: flip first)."""
        flip = np.diag([*np.where(p["flip"][i], -1.0, 1.0), 1.0])
        if not p["affine"][i]:
            return flip
        return flip @ spatial_matrix(p["rotate"][i], p["shear"][i], p["translate"][i], p["scale"][i])

    # -- intensity ------------------------------------------------------------------------------

    def intensity(self, image: torch.Tensor) -> torch.Tensor:
        """Bias field, blur, noise, Rician noise, brightness, contrast, gamma (that order)."""
        c, n, device = self.config, len(image), image.device
        steps: list[tuple[str, float, Callable[[torch.Tensor, np.ndarray, Any], torch.Tensor], int]] = [
            ("bias", c.bias_prob, lambda x, v, g: bias_field(x, v), 20),
            ("blur", c.blur_prob, lambda x, v, g: gaussian_blur(x, v, BLUR_TRUNCATE), 3),
            ("noise", c.noise_prob, lambda x, v, g: x + _per_sample(v[:, 0], x) * _randn(x, g), 1),
            ("rician", c.rician_prob, lambda x, v, g: rician(x, _per_sample(v[:, 0], x), g), 1),
            ("brightness", c.brightness_prob, lambda x, v, g: x * _per_sample(1 + v[:, 0], x), 1),
            ("contrast", c.contrast_prob, lambda x, v, g: contrast(x, _per_sample(1 + v[:, 0], x)), 1),
            ("gamma", c.gamma_prob, lambda x, v, g: gamma(x, _per_sample(v[:, 0], x)), 1),
        ]
        ranges = {
            "bias": c.bias_coeff_range,
            "blur": c.blur_sigma_vox,
            "noise": (0.0, c.noise_std),
            "rician": (0.0, c.rician_std),
            "brightness": (-c.brightness_range, c.brightness_range),
            "contrast": (-c.contrast_range, c.contrast_range),
            "gamma": c.gamma_range,
        }
        for stage, prob, apply, size in steps:
            if prob <= 0:
                continue
            on = self._on(stage, prob, n)
            values = self._rng[stage].uniform(*ranges[stage], (n, size))
            needs_field = stage in ("noise", "rician")
            generator = self._generator(stage, device) if needs_field else None
            if on.any():
                index = torch.as_tensor(np.flatnonzero(on), device=device)
                image[index] = apply(image[index], values[on], generator)
        return image


# -- spatial steps, one function each -----------------------------------------------------------


def sampling_grid(
    matrices: torch.Tensor, shape: tuple[int, int, int], displacement: torch.Tensor | None = None
) -> torch.Tensor:
    """``grid_sample``'s grid ``(B, X, Y, Z, 3)`` for output → input maps in centred voxel coordinates.

    The grid is what ``F.affine_grid(theta, align_corners=False)`` gives (to 1e-7), built as the sum
    of one term per axis, which is several times faster on a CPU.

    Args:
        matrices: ``(B, 4, 4)`` maps ``c ↦ A c + t`` (X, Y, Z; voxels).
        shape: the volume's ``(X, Y, Z)``.
        displacement: ``(B, 3, X, Y, Z)`` voxels added to ``c`` before the map (elastic), or ``None``.

    Returns:
        Normalised coordinates (``align_corners=False``), last dimension in torch's (Z, Y, X) order.
    """
    half = torch.tensor([n / 2 for n in shape], dtype=matrices.dtype, device=matrices.device)
    linear, shift = matrices[:, :3, :3], matrices[:, :3, 3]
    theta = linear * half / half[:, None]  # maps normalised output to normalised input coordinates
    grid = (shift / half)[:, None, None, None, :]
    for axis, n in enumerate(shape):
        u = (torch.arange(n, dtype=matrices.dtype, device=matrices.device) * 2 + 1) / n - 1
        view = [1, 1, 1, 1, 1]
        view[1 + axis] = n
        grid = grid + theta[:, None, None, None, :, axis] * u.view(view)
    if displacement is not None:
        grid = grid + torch.einsum("bij,bjxyz->bxyzi", linear, displacement) / half
    return grid.flip(-1)  # (X, Y, Z) → torch's (W, H, D) = (Z, Y, X)


def elastic_displacement(
    on: np.ndarray,
    sigma: np.ndarray,
    magnitude: np.ndarray,
    shape: tuple[int, int, int],
    device: torch.device,
    generator: torch.Generator,
) -> torch.Tensor:
    """MONAI ``Rand3DElastic``'s displacement ``(B, 3, X, Y, Z)`` in voxels (0 where ``on`` is false):
    offsets uniform in [−1, 1) per voxel and axis, smoothed by a Gaussian of ``sigma`` voxels
    (zero-padded, truncated at 3 sigma), times ``magnitude``."""
    offsets = torch.rand((len(on), 3, *shape), generator=generator, device=device) * 2 - 1
    smooth = gaussian_blur(offsets, sigma[:, None].repeat(3, 1), ELASTIC_TRUNCATE, "constant", "erf")
    scale = torch.as_tensor(np.where(on, magnitude, 0.0), dtype=torch.float32, device=device)
    return smooth * scale.view(-1, 1, 1, 1, 1)


# -- intensity steps ----------------------------------------------------------------------------


def _per_sample(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``values`` ``(B,)`` as a ``(B, 1, 1, 1, 1)`` tensor on ``like``'s device."""
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1, 1, 1)


def _randn(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def gaussian_blur(
    image: torch.Tensor,
    sigma: np.ndarray,
    truncate: float,
    padding: str = "replicate",
    approx: str = "sampled",
) -> torch.Tensor:
    """Separable Gaussian blur with a sigma per sample and axis.

    Args:
        image: ``(B, C, X, Y, Z)``.
        sigma: ``(B, 3)`` voxels.
        truncate: kernel half-width in sigmas.
        padding: ``replicate`` (the edge value, as scipy's ``mode="nearest"``) or ``constant`` (zeros).
        approx: ``sampled`` (normalised samples of the Gaussian, as ``scipy.ndimage.gaussian_filter``)
            or ``erf`` (MONAI ``GaussianFilter``'s default kernel).
    """
    n, channels = image.shape[:2]
    out = image.reshape(1, n * channels, *image.shape[2:])
    for axis in range(3):
        kernels = [
            gaussian_1d(
                torch.tensor(float(s)), truncated=truncate, approx=approx, normalize=approx == "sampled"
            )
            for s in sigma[:, axis]
        ]
        radius = max(len(k) // 2 for k in kernels)
        weight = torch.stack([F.pad(k, (radius - len(k) // 2,) * 2) for k in kernels]).to(image)
        weight = weight.repeat_interleave(channels, 0)  # (n·C, K)
        view = [n * channels, 1, 1, 1, 1]
        view[2 + axis] = 2 * radius + 1
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode=padding), weight.view(view), groups=n * channels)
    return out.reshape(image.shape)


def bias_field(image: torch.Tensor, coeffs: np.ndarray) -> torch.Tensor:
    """``image · exp(field)``, the field a degree-3 Legendre polynomial (MONAI ``RandBiasField``).

    ``coeffs`` ``(B, 20)``: the coefficients of ``P_i(x) P_j(y) P_k(z)``, ``i + j + k ≤ 3``, in
    MONAI's order; coordinates run over [−1, 1] along each axis; one field for all channels.
    """
    terms = [(i, j, k) for i in range(4) for j in range(4 - i) for k in range(4 - i - j)]
    table = torch.zeros((len(image), 4, 4, 4), dtype=image.dtype, device=image.device)
    values = torch.as_tensor(coeffs, dtype=image.dtype, device=image.device)
    for m, (i, j, k) in enumerate(terms):
        table[:, i, j, k] = values[:, m]
    x, y, z = (_legendre(n, image) for n in image.shape[2:])
    field = torch.einsum("bijk,ix,jy,kz->bxyz", table, x, y, z)
    return image * torch.exp(field)[:, None]


def _legendre(n: int, like: torch.Tensor) -> torch.Tensor:
    """Legendre polynomials P0–P3 at ``n`` points spanning [−1, 1]: ``(4, n)``."""
    t = torch.linspace(-1.0, 1.0, n, dtype=like.dtype, device=like.device)
    return torch.stack([torch.ones_like(t), t, (3 * t**2 - 1) / 2, (5 * t**3 - 3 * t) / 2])


def rician(image: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rician noise: ``sqrt((x + n1)² + n2²)``, ``n1, n2 ~ N(0, std²)`` (MONAI ``RandRicianNoise``)."""
    n1, n2 = _randn(image, generator) * std, _randn(image, generator) * std
    return torch.sqrt((image + n1) ** 2 + n2**2)


def contrast(image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scaling by ``factor`` around each sample's mean (all channels; MONAI ``ScaleIntensityFixedMean``)."""
    mean = image.mean(dim=(1, 2, 3, 4), keepdim=True)
    return (image - mean) * factor + mean


def gamma(image: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Gamma on each sample's min–max rescaled intensities, then scaled back (MONAI ``AdjustContrast``)."""
    flat = image.flatten(1)
    low = flat.min(1).values.view(-1, 1, 1, 1, 1)
    span = flat.max(1).values.view(-1, 1, 1, 1, 1) - low
    return ((image - low) / (span + GAMMA_EPSILON)) ** value * span + low
