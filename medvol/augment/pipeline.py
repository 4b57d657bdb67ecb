"""Random augmentation of an image and its label map with one draw for both.

``build_augmenter(config, seed)`` turns an ``AugmentConfig`` into a callable
that takes and returns plain numpy samples ``{"image": (C, X, Y, Z) float32,
"label": (1, X, Y, Z) int}`` (either key may be missing). Internally it runs
MONAI dictionary transforms; no MONAI type leaves this module.

Order of the stages (each applied with its own probability):

1. spatial, on image and label with the same random draw: flips (only on the
   axes the dataset declares safe), affine (rotation, scaling, shear,
   translation), elastic deformation. Images are interpolated linearly, labels
   by nearest neighbour, so a label keeps its dtype and its values (voxels moved
   in from outside the field of view become 0, background);
2. bias field, then MR artefacts: motion, ghosting, k-space spike, Gibbs ringing;
3. Gaussian blur, Gaussian and Rician noise;
4. brightness (multiplicative), contrast (scaling around the mean), gamma.

Stages 2–4 touch the image only.

Units: spatial ranges are in voxels or degrees. Rotations and elastic
displacements act on voxel indices, so apply them after resampling to
(near-)isotropic spacing. Intensity ranges (noise std, Rician std) are in the
units of the image, which are meant to be normalised (z-score, or [0, 1]);
brightness/contrast factors, gamma and bias coefficients are unitless.

Seeding: every random stage gets its own stream, spawned from the seed with a
fixed key per stage, so turning one stage on or off does not change the draws of
the others. Use ``worker_seed(base_seed, rank, worker_id, epoch)`` in a
DataLoader's ``worker_init_fn`` (``augmenter.reseed(...)``) so that workers
and DDP ranks never repeat each other's draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
from monai.transforms import (
    MapTransform,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGibbsNoised,
    RandKSpaceSpikeNoised,
    RandomizableTransform,
    RandRicianNoised,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
)
from monai.utils import convert_to_numpy
from scipy import ndimage

from medvol.augment.config import AugmentConfig, Range, Seed, augment_config_from_dict
from medvol.errors import MedvolError
from medvol.volume import Volume

__all__ = [
    "AugmentConfig",
    "Augmenter",
    "augment_config_from_dict",
    "build_augmenter",
    "worker_seed",
]


def worker_seed(base_seed: int, rank: int = 0, worker_id: int = 0, epoch: int = 0) -> np.random.SeedSequence:
    """An independent seed for one DDP rank, DataLoader worker and epoch.

    Built with numpy's ``SeedSequence`` spawn keys ``(rank, worker_id, epoch)``:
    distinct keys give statistically independent streams (no 32-bit seed
    arithmetic such as ``base + worker_id``, which collides across ranks).
    Pass ``epoch`` when workers are re-created each epoch (the DataLoader default,
    ``persistent_workers=False``), otherwise every epoch repeats the draws.

    Returns:
        A ``SeedSequence`` for ``build_augmenter``/``Augmenter.reseed`` or
        ``np.random.default_rng``; ``int(seq.generate_state(1)[0])`` gives a
        32-bit integer for ``torch.manual_seed``.
    """
    for name, value in (("base_seed", base_seed), ("rank", rank), ("worker_id", worker_id), ("epoch", epoch)):
        if value < 0:
            raise ValueError(f"{name} must be ≥ 0, got {value}")
    return np.random.SeedSequence(base_seed, spawn_key=(rank, worker_id, epoch))


def spawn_seed(seed: Seed, *keys: int) -> np.random.SeedSequence:
    """The child of ``seed`` at spawn key ``keys``: independent of its siblings, and stateless.

    Unlike ``SeedSequence.spawn`` this does not depend on how many children
    were spawned before, so the same keys always give the same stream.
    """
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return np.random.SeedSequence(root.entropy, spawn_key=(*root.spawn_key, *keys))


# Stage names in application order; a stage's index is its spawn key, so it never changes.
STAGES = (
    "flip_x",
    "flip_y",
    "flip_z",
    "affine",
    "elastic",
    "bias",
    "motion",
    "ghosting",
    "spike",
    "gibbs",
    "blur",
    "noise",
    "rician",
    "brightness",
    "contrast",
    "gamma",
)
BOTH = ("image", "label")
IMAGE = ("image",)


def _stages(config: AugmentConfig) -> list[tuple[str, Any]]:
    """The MONAI dictionary transforms of the enabled stages (probability > 0), in order."""
    c = config
    both: dict[str, Any] = {"keys": BOTH, "allow_missing_keys": True}
    spatial: dict[str, Any] = {**both, "mode": ("bilinear", "nearest"), "padding_mode": "zeros"}
    image: dict[str, Any] = {"keys": IMAGE, "allow_missing_keys": True}
    stages: list[tuple[str, Any]] = [
        (f"flip_{'xyz'[axis]}", RandFlipd(**both, prob=c.flip_prob, spatial_axis=axis))
        for axis in sorted(set(c.flip_axes))
        if c.flip_prob > 0
    ]
    candidates: list[tuple[str, float, Callable[[], Any]]] = [
        (
            "affine",
            c.affine_prob,
            lambda: RandAffined(
                **spatial,
                prob=c.affine_prob,
                rotate_range=(math.radians(c.rotate_deg),) * 3,
                scale_range=(c.scale_range,) * 3,
                shear_range=(c.shear_range,) * 6,
                translate_range=(c.translate_vox,) * 3,
            ),
        ),
        (
            "elastic",
            c.elastic_prob,
            lambda: Rand3DElasticd(
                **spatial,
                prob=c.elastic_prob,
                sigma_range=c.elastic_sigma_vox,
                magnitude_range=c.elastic_magnitude,
            ),
        ),
        (
            "bias",
            c.bias_prob,
            lambda: RandBiasFieldd(**image, prob=c.bias_prob, coeff_range=c.bias_coeff_range),
        ),
        ("motion", c.motion_prob, lambda: RandMotiond(IMAGE, c.motion_prob, c.motion_shift_vox)),
        (
            "ghosting",
            c.ghosting_prob,
            lambda: RandGhostingd(IMAGE, c.ghosting_prob, c.ghosting_count, c.ghosting_intensity),
        ),
        (
            "spike",
            c.spike_prob,
            lambda: RandKSpaceSpikeNoised(**image, prob=c.spike_prob, intensity_range=c.spike_log_intensity),
        ),
        ("gibbs", c.gibbs_prob, lambda: RandGibbsNoised(**image, prob=c.gibbs_prob, alpha=c.gibbs_alpha)),
        (
            "blur",
            c.blur_prob,
            lambda: RandBlurd(IMAGE, prob=c.blur_prob, sigma_vox=c.blur_sigma_vox),
        ),
        ("noise", c.noise_prob, lambda: RandGaussianNoised(**image, prob=c.noise_prob, std=c.noise_std)),
        ("rician", c.rician_prob, lambda: RandRicianNoised(**image, prob=c.rician_prob, std=c.rician_std)),
        (
            "brightness",
            c.brightness_prob,
            lambda: RandScaleIntensityd(**image, prob=c.brightness_prob, factors=c.brightness_range),
        ),
        (
            "contrast",
            c.contrast_prob,
            lambda: RandScaleIntensityFixedMeand(**image, prob=c.contrast_prob, factors=c.contrast_range),
        ),
        ("gamma", c.gamma_prob, lambda: RandAdjustContrastd(**image, prob=c.gamma_prob, gamma=c.gamma_range)),
    ]
    return stages + [(name, make()) for name, prob, make in candidates if prob > 0]


class Augmenter:
    """A seeded augmentation pipeline: ``augmenter(sample) -> sample``.

    Each call makes a new random draw; two augmenters built with the same
    config and seed give the same sequence of draws.
    """

    def __init__(self, config: AugmentConfig, seed: Seed) -> None:
        self.config = config
        self._stages = _stages(config)
        self.reseed(seed)

    def reseed(self, seed: Seed) -> None:
        """Restart the random streams from ``seed`` (an int or ``worker_seed(...)``)."""
        for name, transform in self._stages:
            stage = spawn_seed(seed, STAGES.index(name))
            transform.set_random_state(state=np.random.RandomState(np.random.MT19937(stage)))

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """Augment one sample.

        Args:
            sample: ``image`` ``(C, X, Y, Z)`` and/or ``label`` ``(1, X, Y, Z)``
                of an integer (or bool) dtype, as numpy arrays on the same
                grid. Other keys (``case_id`` ...) are passed through.

        Returns:
            A new dict: ``image`` float32 ``(C, X, Y, Z)``, ``label`` with the
            input's dtype and shape and a subset of its values (plus 0 where
            voxels came in from outside the field of view).

        Raises:
            MedvolError: wrong shapes, a float label, or image/label grids that differ.
        """
        data: dict[Hashable, Any] = {}
        shapes = {}
        for key in BOTH:
            if key in sample:
                array = np.asarray(sample[key])
                if array.ndim != 4:
                    raise MedvolError(None, f"{key} must have shape (C, X, Y, Z), got {array.shape}")
                shapes[key] = array.shape[1:]
                data[key] = array.astype(np.float32)
        if len(set(shapes.values())) > 1:
            raise MedvolError(None, f"image {shapes['image']} and label {shapes['label']} grids differ")
        label_dtype = np.asarray(sample["label"]).dtype if "label" in sample else None
        if label_dtype is not None and label_dtype.kind not in "biu":
            raise MedvolError(None, f"label must have an integer dtype, got {label_dtype}")
        for _, transform in self._stages:
            data = transform(data)
        out = dict(sample)
        if "image" in data:
            out["image"] = convert_to_numpy(data["image"], dtype=np.float32)
        if label_dtype is not None:
            out["label"] = np.rint(convert_to_numpy(data["label"])).astype(label_dtype)
        return out

    def volumes(self, image: Volume, label: Volume | None = None) -> tuple[Volume, Volume | None]:
        """Augment a ``Volume`` (and its label): same grid and affine, new voxels."""
        sample = self(
            {"image": image.array} if label is None else {"image": image.array, "label": label.array}
        )
        note = {"augmented": True}
        out_label = None if label is None else Volume(sample["label"], label.affine, {**label.meta, **note})
        return Volume(sample["image"], image.affine, {**image.meta, **note}), out_label


def build_augmenter(config: AugmentConfig | None = None, seed: Seed = 0) -> Augmenter:
    """A reproducible augmentation pipeline for ``config`` (default ``AugmentConfig()``).

    Args:
        config: stages, probabilities and ranges.
        seed: an int, or ``worker_seed(base_seed, rank, worker_id, epoch)``.
    """
    return Augmenter(config or AugmentConfig(), seed)


# --- Gaussian blur without a dark frame -----------------------------------------------------------


class RandBlurd(RandomizableTransform, MapTransform):
    """Gaussian blur with a random sigma per axis, edges extended (not zero-padded).

    MONAI's ``RandGaussianSmoothd`` pads with zeros, which darkens a frame
    along every border (visible in labels-to-image synthesis); here the volume
    is extended with its nearest values (``scipy.ndimage.gaussian_filter``,
    ``mode="nearest"``), so a constant image stays constant.
    """

    def __init__(self, keys: tuple[str, ...], prob: float, sigma_vox: Range) -> None:
        RandomizableTransform.__init__(self, prob=prob)
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        self.sigma_vox = sigma_vox

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        sigma = (0.0, *self.R.uniform(self.sigma_vox[0], self.sigma_vox[1], size=3))  # not across channels
        for key in self.key_iterator(d):
            image = convert_to_numpy(d[key], dtype=np.float32)
            d[key] = ndimage.gaussian_filter(image, sigma=sigma, mode="nearest").astype(np.float32)
        return d


# --- MR artefacts MONAI lacks: motion and ghosting, simulated in k-space ----------------------------


class _KSpaced(RandomizableTransform, MapTransform):
    """Base for k-space artefacts on the image key; subclasses draw and apply."""

    def __init__(self, keys: tuple[str, ...], prob: float) -> None:
        RandomizableTransform.__init__(self, prob=prob)
        MapTransform.__init__(self, keys, allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        params = self.draw()
        for key in self.key_iterator(d):
            image = convert_to_numpy(d[key], dtype=np.float32)
            kspace = np.fft.fftn(image, axes=(1, 2, 3))
            d[key] = np.fft.ifftn(self.corrupt(kspace, *params), axes=(1, 2, 3)).real.astype(np.float32)
        return d

    def draw(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def corrupt(self, kspace: np.ndarray, *params: Any) -> np.ndarray:
        raise NotImplementedError


class RandMotiond(_KSpaced):
    """Rigid motion during the scan: later phase-encode lines see a translated patient.

    Lines are acquired in order of increasing frequency along a random phase
    axis; from a random frequency above the centre on, k-space is that of the
    image translated by up to ``max_shift_vox`` (a phase ramp). The centre of
    k-space is never moved, so the anatomy stays where the label says it is;
    the artefact is edge ghosting and blurring along the phase axis.
    """

    def __init__(self, keys: tuple[str, ...], prob: float, max_shift_vox: float) -> None:
        super().__init__(keys, prob)
        self.max_shift_vox = max_shift_vox

    def draw(self) -> tuple[Any, ...]:
        shift = self.R.uniform(-self.max_shift_vox, self.max_shift_vox, size=3)
        return shift, int(self.R.randint(3)), float(self.R.uniform(0.05, 0.4))

    def corrupt(self, kspace: np.ndarray, *params: Any) -> np.ndarray:
        shift, axis, start = params
        freqs = np.meshgrid(*(np.fft.fftfreq(n) for n in kspace.shape[1:]), indexing="ij")
        ramp = np.exp(-2j * np.pi * sum(f * s for f, s in zip(freqs, shift, strict=True)))
        moved = np.expand_dims(freqs[axis] >= start, 0)
        return np.where(moved, kspace * ramp, kspace)


class RandGhostingd(_KSpaced):
    """Ghosting: every n-th phase-encode line is attenuated, giving n faint shifted copies."""

    def __init__(self, keys: tuple[str, ...], prob: float, count: tuple[int, int], intensity: Range) -> None:
        super().__init__(keys, prob)
        self.count = count
        self.intensity = intensity

    def draw(self) -> tuple[Any, ...]:
        count = int(self.R.randint(self.count[0], self.count[1] + 1))
        return count, int(self.R.randint(3)), float(self.R.uniform(*self.intensity))

    def corrupt(self, kspace: np.ndarray, *params: Any) -> np.ndarray:
        count, axis, intensity = params
        index = np.arange(kspace.shape[axis + 1])
        lines = (index % count == 0) & (index != 0)  # keep the DC line: mean intensity unchanged
        shape = [1, 1, 1, 1]
        shape[axis + 1] = -1
        return kspace * np.where(lines, 1.0 - intensity, 1.0).reshape(shape)
