"""Dataset fingerprint and the preprocessing plan derived from it.

The fingerprint summarises what a dataset is (spacings, shapes, intensities
inside the labelled foreground, class frequencies); the plan turns it into
choices (target spacing, patch size, normalisation) by the rules nnU-Net made
standard, written as a YAML file the user can read and edit.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medvol.data.cases import Case, load_case
from medvol.logs import get_logger

logger = get_logger(__name__)

FOREGROUND_SAMPLES_PER_CASE = 10_000
ANISOTROPY_RATIO = 3.0
PATCH_MULTIPLE = 8  # three 2x poolings
MAX_PATCH_VOXELS = 128**3
SHAPE_NOISE_VOXELS = 1e-3  # a shape this close above a whole number is that number


def fingerprint(cases: Sequence[Case], modality: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Measure a dataset: per-case spacing (mm) and shape, foreground intensities, class voxels.

    Args:
        cases: usable cases (images and label maps).
        modality: ``"CT"``, ``"MR"``...; default from each image's metadata
            (a DICOM header, or the JSON sidecar ``medvol convert`` writes),
            see :func:`choose_modality`.
        seed: for the sample of foreground voxels kept per case.

    Returns:
        ``modality`` (the one the plan normalises for, ``None`` when unknown
        or mixed), ``modalities`` (cases per modality found in the metadata,
        ``"unknown"`` for none), spacings and shapes along RAS, their medians,
        foreground intensity statistics and class fractions.
    """
    rng = np.random.default_rng(seed)
    spacings, shapes, samples = [], [], []
    found: list[str | None] = []
    class_voxels: Counter[int] = Counter()
    for case in cases:
        image, labels = load_case(case)
        # The plan is applied after reorienting to RAS: measure along RAS axes.
        spacings.append(_along_ras(image.spacing, image.affine))
        shapes.append(_along_ras(image.shape, image.affine))
        found.append(_modality_name(image.meta.get("modality")))
        if labels is None:
            foreground = image.array[0].ravel()
        else:
            label = labels.array[0]
            values, counts = np.unique(label, return_counts=True)
            class_voxels.update({int(v): int(c) for v, c in zip(values, counts, strict=True)})
            foreground = image.array[0][label > 0]
        if foreground.size:
            take = min(FOREGROUND_SAMPLES_PER_CASE, foreground.size)
            samples.append(rng.choice(foreground.astype(np.float64), take, replace=False))
    intensities = np.concatenate(samples) if samples else np.zeros(1)
    total = sum(class_voxels.values()) or 1
    return {
        "cases": len(cases),
        "modality": choose_modality(found, _modality_name(modality)),
        "modalities": dict(sorted(Counter(m or "unknown" for m in found).items())),
        "spacings_mm": [list(s) for s in spacings],
        "shapes": [list(s) for s in shapes],
        "median_spacing_mm": np.median(spacings, axis=0).tolist(),
        "median_shape": np.median(shapes, axis=0).tolist(),
        "foreground_intensity": {
            "mean": float(intensities.mean()),
            "std": float(intensities.std()),
            "percentile_00_5": float(np.percentile(intensities, 0.5)),
            "percentile_99_5": float(np.percentile(intensities, 99.5)),
            "min": float(intensities.min()),
            "max": float(intensities.max()),
        },
        "class_fraction": {str(k): class_voxels[k] / total for k in sorted(class_voxels)},
    }


def _modality_name(value: Any) -> str | None:
    """``" ct "`` → ``"CT"``; nothing, or an empty text, → ``None``."""
    text = str(value).strip().upper() if value is not None else ""
    return text or None


def choose_modality(found: Sequence[str | None], given: str | None = None) -> str | None:
    """The modality a plan normalises for, from each case's (``None``: unknown), with a warning when unsure.

    ``given`` (``--modality``) wins; a warning says how many cases' metadata
    disagree with it. Otherwise the cases' own modality when all that know
    one agree; a warning names how many cases are unknown and which
    normalisation that gives. Cases of several modalities, or none known,
    give ``None``: the plan then normalises each scan on its own (z-score),
    the default for anything but CT.
    """
    count = len(found)
    known = Counter(m for m in found if m is not None)
    unknown = count - sum(known.values())
    if given is not None:
        other = sum(n for m, n in known.items() if m != given)
        if other:
            listed = ", ".join(f"{m}: {n}" for m, n in sorted(known.items()) if m != given)
            logger.warning(
                "planned as %s (--modality), but the metadata of %d of %d cases says otherwise (%s)",
                given,
                other,
                count,
                listed,
            )
        return given
    default = "z-score per scan, the normalisation for modalities other than CT"
    advice = "pass --modality CT or MR to choose"
    if len(known) > 1:
        listed = ", ".join(f"{m}: {n}" for m, n in sorted(known.items()))
        unknown_part = f", unknown: {unknown}" if unknown else ""
        logger.warning(
            "the cases are of several modalities (%s%s): planned with %s; plan each modality "
            "on its own, or %s",
            listed,
            unknown_part,
            default,
            advice,
        )
        return None
    if not known:
        logger.warning(
            "modality unknown for all %d cases (no DICOM header or JSON sidecar names it): "
            "planned with %s; %s",
            count,
            default,
            advice,
        )
        return None
    ((modality, with_it),) = known.items()
    if unknown:
        logger.warning(
            "modality unknown for %d of %d cases (no DICOM header or JSON sidecar names it): planned as %s, "
            "the modality of the other %d; %s",
            unknown,
            count,
            modality,
            with_it,
            advice,
        )
    return modality


def _along_ras(values: Sequence[float], affine: np.ndarray) -> list[float]:
    """Per-axis ``values`` ``(X, Y, Z)`` reordered as the axes lie after reorienting to RAS."""
    axes = nib.orientations.io_orientation(affine)[:, 0].astype(int)  # each index axis' RAS axis
    reordered = [0.0, 0.0, 0.0]
    for axis, value in zip(axes, values, strict=True):
        reordered[axis] = value
    return reordered


def target_spacing(spacings_mm: Sequence[Sequence[float]]) -> list[float]:
    """Median spacing; for anisotropic data the coarse axis takes its 10th percentile.

    This is nnU-Net's rule: resampling thick slices to their median would
    interpolate too much, so the coarse axis is made finer only as far as a
    tenth of the cases already are.
    """
    spacings = np.asarray(spacings_mm, dtype=np.float64)
    target = np.median(spacings, axis=0)
    coarse = int(np.argmax(target))
    if target[coarse] > ANISOTROPY_RATIO * np.min(target):
        target[coarse] = np.percentile(spacings[:, coarse], 10)
    return [round(float(v), 4) for v in target]


def patch_size(median_shape_at_target: Sequence[float]) -> list[int]:
    """The training patch ``(X, Y, Z)`` in voxels for a dataset's median shape at the target spacing.

    Each axis takes the largest multiple of 8 that fits in the median shape
    (whole voxels; float noise under ``SHAPE_NOISE_VOXELS`` is ignored, so
    24.000002 is 24 and 319.9999997 is 320); an axis shorter than 8 voxels
    keeps its median length. The patch is then shrunk by 8 along its largest
    axis until it has at most ``MAX_PATCH_VOXELS``. A patch never exceeds the
    median shape, so a typical case is never padded to fill it.
    """
    whole = [max(1, int(np.floor(s + SHAPE_NOISE_VOXELS))) for s in median_shape_at_target]
    patch = [n // PATCH_MULTIPLE * PATCH_MULTIPLE or n for n in whole]
    while np.prod(patch) > MAX_PATCH_VOXELS:
        largest = int(np.argmax(patch))
        patch[largest] -= PATCH_MULTIPLE
    return patch


def make_plan(measured: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing and patch plan for a fingerprint (see ``fingerprint``)."""
    spacing = target_spacing(measured["spacings_mm"])
    # Each case's shape after resampling, rounded as medvol.transforms.preprocess rounds it.
    shapes_at_target = [
        np.maximum(np.round(np.asarray(shape) * np.asarray(case_spacing) / np.asarray(spacing)), 1)
        for shape, case_spacing in zip(measured["shapes"], measured["spacings_mm"], strict=True)
    ]
    # CT: nnU-Net's scheme, fitted later on the training fold only (clip to the
    # foreground's 0.5/99.5 percentiles, then z-score); other modalities: per scan.
    is_ct = str(measured.get("modality") or "").upper() == "CT"
    normalize = {
        "type": "ZScore",
        "params": {
            "per_scan": not is_ct,
            "use_foreground_mask": is_ct,
            "clip_percentiles": [0.5, 99.5] if is_ct else None,
        },
    }
    return {
        "preprocess": {"orientation": "RAS", "spacing_mm": spacing},
        "normalize": normalize,
        "patch_size": patch_size(np.median(shapes_at_target, axis=0)),
    }


def write_plan(plan: dict[str, Any], measured: dict[str, Any], path: str | Path, source: str) -> Path:
    """Write the plan as commented YAML, the fingerprint summary beside it as JSON."""
    import yaml

    from medvol.io.atomic import atomic_path

    path = Path(path)
    modalities = ", ".join(f"{m}: {n}" for m, n in measured.get("modalities", {}).items())
    modality = measured.get("modality") or "unknown"
    header = (
        f"# medvol plan for {source}, from {measured['cases']} cases.\n"
        f"# Modality: {modality}; the cases' metadata says {modalities}.\n"
        "# Derived from the dataset fingerprint (see the .fingerprint.json beside this file).\n"
        "# Edit freely before training.\n"
    )
    with atomic_path(path) as temporary:
        temporary.write_text(header + yaml.safe_dump(plan, sort_keys=False, default_flow_style=None))
    summary = {k: v for k, v in measured.items() if k not in ("spacings_mm", "shapes")}
    with atomic_path(path.with_suffix(".fingerprint.json")) as temporary:
        temporary.write_text(json.dumps(summary, indent=2))
    return path
