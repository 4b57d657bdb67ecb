"""What to augment (``AugmentConfig``): settings only, so a config reads without MONAI or torch.

The ``augment:`` section of an experiment config is an ``AugmentConfig``
(``medvol.config``); ``medvol.augment.pipeline`` and
``medvol.augment.batched`` apply it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from medvol.errors import MedvolError

Seed = int | np.random.SeedSequence
Range = tuple[float, float]

#: ``mix`` values and the task each is for (``medvol.augment.mixing``).
MIXES = {"carvemix": "segmentation", "mixup": "classification", "cutmix": "classification"}


@dataclass(frozen=True)
class AugmentConfig:
    """What to augment, how often (``*_prob`` in [0, 1]) and how strongly.

    The defaults are a moderate, direction-safe recipe for normalised MR/CT:
    no flips, MR artefacts and elastic deformation off.

    Attributes:
        flip_axes: voxel axes (0 = X, 1 = Y, 2 = Z) that may be flipped. Empty
            by default: a flip swaps left/right or anterior/posterior and so the
            meaning of direction-bearing labels (hippocampus anterior/posterior,
            left/right organs). Declare axes only where that is harmless. Flip TTA
            (``--flip-tta``) mirrors these axes and no others.
        flip_prob: probability of flipping, drawn independently per allowed axis.
        affine_prob: probability of one random affine (all of the next four).
        rotate_deg: largest rotation about each axis, degrees (uniform ±).
        scale_range: largest relative scaling per axis: factor in [1 − s, 1 + s].
        shear_range: largest shear coefficient (unitless, uniform ±).
        translate_vox: largest translation per axis, voxels (uniform ±).
        elastic_prob: probability of an elastic deformation.
        elastic_sigma_vox: range of the smoothing sigma of the displacement
            field, voxels (larger: smoother, more global deformation).
        elastic_magnitude: range of the displacement magnitude (MONAI
            ``Rand3DElastic``; displacement of a few voxels after smoothing).
        bias_prob: probability of a smooth multiplicative bias field.
        bias_coeff_range: range of the polynomial coefficients of the log field.
        motion_prob: probability of a rigid-motion artefact (k-space).
        motion_shift_vox: largest in-scan translation of the patient, voxels.
        ghosting_prob: probability of ghosting along a random phase axis.
        ghosting_count: range of the number of ghosts (integers).
        ghosting_intensity: range of the attenuation of every n-th k-space
            line (0: none, 1: line removed).
        spike_prob: probability of a k-space spike (herringbone artefact).
        spike_log_intensity: range of the spike's log-magnitude in k-space;
            ``None``: MONAI's data-dependent default.
        gibbs_prob: probability of Gibbs ringing (k-space truncation).
        gibbs_alpha: range of the truncated fraction of k-space (0: none, 1: all).
        blur_prob: probability of a Gaussian blur.
        blur_sigma_vox: range of the blur sigma per axis, voxels.
        noise_prob: probability of additive Gaussian noise.
        noise_std: largest noise standard deviation, image units (drawn in [0, std]).
        rician_prob: probability of Rician noise (MR magnitude noise). Its output
            is a magnitude (≥ 0): use it on non-negative images, not z-scores.
        rician_std: largest Rician noise std, image units (drawn in [0, std]).
        brightness_prob: probability of a multiplicative brightness change.
        brightness_range: largest relative change: factor in [1 − b, 1 + b].
        contrast_prob: probability of a contrast change around the image mean.
        contrast_range: largest relative change: factor in [1 − c, 1 + c].
        gamma_prob: probability of a gamma change (on the min–max rescaled image).
        gamma_range: range of gamma.
        where: where the training loop augments. ``batch``: each batch at once
            on the training device, after it is moved there
            (``medvol.augment.batched``: one resampling per batch for every
            spatial stage, intensity stages as tensor operations; the k-space
            MR artefacts stay per sample and run first, in the data loader).
            ``sample``: every stage per sample in the data loader
            (numpy/MONAI). ``auto`` (default): ``batch`` on a GPU or when
            ``data.num_workers`` is 0, ``sample`` on a CPU with loader
            workers, which already augment in parallel with the model
            (measured in ``docs/benchmarks-training.md``). Same stages,
            distributions and seeding either way; only the random numbers differ.
        mix: mixing two cases of a training batch, after the other stages
            (``medvol.augment.mixing``): ``none`` (default), ``carvemix``
            (segmentation: a case's labelled structures pasted into another,
            image and label together), ``mixup`` or ``cutmix``
            (classification, with soft targets). Always per batch on the
            training device, whatever ``where`` says.
        mix_prob: probability that a sample of the batch is mixed with another.
        mix_alpha: the α of the Beta(α, α) distribution of the MixUp weight and of
            the share of voxels CutMix keeps.
        carve_margin_vox: range of the margin (voxels) by which CarveMix
            dilates the structures it carves, so some context comes along.
    """

    flip_axes: tuple[int, ...] = ()
    flip_prob: float = 0.5
    affine_prob: float = 0.2
    rotate_deg: float = 15.0
    scale_range: float = 0.15
    shear_range: float = 0.0
    translate_vox: float = 0.0
    elastic_prob: float = 0.0
    elastic_sigma_vox: Range = (5.0, 8.0)
    elastic_magnitude: Range = (50.0, 150.0)
    bias_prob: float = 0.1
    bias_coeff_range: Range = (0.0, 0.1)
    motion_prob: float = 0.0
    motion_shift_vox: float = 3.0
    ghosting_prob: float = 0.0
    ghosting_count: tuple[int, int] = (2, 5)
    ghosting_intensity: Range = (0.3, 0.7)
    spike_prob: float = 0.0
    spike_log_intensity: Range | None = None
    gibbs_prob: float = 0.0
    gibbs_alpha: Range = (0.0, 0.5)
    blur_prob: float = 0.1
    blur_sigma_vox: Range = (0.5, 1.0)
    noise_prob: float = 0.1
    noise_std: float = 0.1
    rician_prob: float = 0.0
    rician_std: float = 0.05
    brightness_prob: float = 0.15
    brightness_range: float = 0.25
    contrast_prob: float = 0.15
    contrast_range: float = 0.25
    gamma_prob: float = 0.15
    gamma_range: Range = (0.7, 1.5)
    where: Literal["auto", "batch", "sample"] = "auto"
    mix: Literal["none", "carvemix", "mixup", "cutmix"] = "none"
    mix_prob: float = 0.5
    mix_alpha: float = 1.0
    carve_margin_vox: Range = (0.0, 3.0)

    def __post_init__(self) -> None:
        problems = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_prob") and not (_is_number(value) and 0 <= value <= 1):
                problems.append(f"{f.name} must be a probability in [0, 1], got {value!r}")
            elif isinstance(f.default, float) and not (_is_number(value) and value >= 0):
                problems.append(f"{f.name} must be a number ≥ 0, got {value!r}")
            elif isinstance(f.default, tuple) and len(f.default) == 2 and not _is_range(value):
                problems.append(f"{f.name} must be two numbers [low, high] with low ≤ high, got {value!r}")
        if self.mix not in ("none", *MIXES):
            problems.append(f"mix must be 'none', 'carvemix', 'mixup' or 'cutmix', got {self.mix!r}")
        if _is_number(self.mix_alpha) and self.mix_alpha <= 0:
            problems.append(f"mix_alpha must be > 0, got {self.mix_alpha!r}")
        if self.where not in ("auto", "batch", "sample"):
            problems.append(f"where must be 'auto', 'batch' or 'sample', got {self.where!r}")
        if not (isinstance(self.flip_axes, tuple) and all(a in (0, 1, 2) for a in self.flip_axes)):
            problems.append(f"flip_axes must list voxel axes among 0, 1, 2, got {self.flip_axes!r}")
        if self.spike_log_intensity is not None and not _is_range(self.spike_log_intensity):
            problems.append(
                f"spike_log_intensity must be null or [low, high], got {self.spike_log_intensity!r}"
            )
        if not problems and max(self.scale_range, self.brightness_range, self.contrast_range) >= 1:
            problems.append("scale_range, brightness_range and contrast_range must be < 1")
        if not problems and not (
            all(isinstance(n, int) for n in self.ghosting_count) and self.ghosting_count[0] >= 2
        ):
            problems.append(f"ghosting_count must be two integers ≥ 2, got {self.ghosting_count!r}")
        if problems:
            raise MedvolError(None, "invalid augmentation config: " + "; ".join(problems))

    def spatial_only(self) -> AugmentConfig:
        """The same spatial stages, with every intensity stage and artefact switched off."""
        spatial = {"flip_prob", "affine_prob", "elastic_prob"}
        off: dict[str, Any] = {f.name: 0.0 for f in dataclasses.fields(self) if f.name.endswith("_prob")}
        return dataclasses.replace(self, **{k: v for k, v in off.items() if k not in spatial})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_range(value: object) -> bool:
    return (
        isinstance(value, tuple) and len(value) == 2 and all(map(_is_number, value)) and value[0] <= value[1]
    )


ConfigT = TypeVar("ConfigT")


def config_from_dict(cls: type[ConfigT], values: Mapping[str, Any], what: str) -> ConfigT:
    """Build a frozen config dataclass from a plain dict (parsed YAML); lists become tuples.

    Raises:
        MedvolError: naming every unknown key (and the known ones), or a bad value.
    """
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(str(key) for key in values if key not in known)
    if unknown:
        raise MedvolError(
            None, f"unknown {what} config key(s): {', '.join(unknown)}; known keys: {', '.join(known)}"
        )
    converted = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
    return cls(**converted)


def augment_config_from_dict(values: Mapping[str, Any]) -> AugmentConfig:
    """``AugmentConfig`` from a plain dict, e.g. the ``augment:`` section of a YAML config.

    Raises:
        MedvolError: an unknown key (all of them are named) or an invalid value.
    """
    return config_from_dict(AugmentConfig, values, "augmentation")
