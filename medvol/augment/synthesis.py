"""Synthetic training data: augmented copies or SynthSeg-style images drawn from label maps.

``labels_to_image`` follows SynthSeg (Billot et al., Medical Image Analysis
86:102789, 2023): every label value (background included) gets a random mean
and standard deviation, voxels are drawn from that Gaussian, and the image is
blurred, multiplied by a smooth bias field, made noisy, gamma-transformed and
rescaled to [0, 1]. The result has the anatomy of the label map and a contrast
no scanner was asked for, which teaches a segmenter to ignore contrast.

``synthesize_cases`` writes such variants (or augmented copies of the real
image) for a list of labelled cases, resumably and deterministically, with a
manifest and a preview.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medvol.augment.config import AugmentConfig, Range, Seed, _is_number, _is_range, config_from_dict
from medvol.augment.pipeline import build_augmenter, spawn_seed
from medvol.errors import MedvolError
from medvol.io import load, save
from medvol.io.atomic import atomic_path, full_suffix
from medvol.logs import get_logger, track
from medvol.volume import Volume

__all__ = [
    "MANIFEST_COLUMNS",
    "Mode",
    "SynthesisConfig",
    "SynthesisReport",
    "labels_to_image",
    "synthesis_config_from_dict",
    "synthesize_cases",
]

logger = get_logger(__name__)

Mode = Literal["augment", "labels-to-image"]
MANIFEST_COLUMNS = (
    "case_id",
    "variant",
    "mode",
    "seed",
    "config",
    "image",
    "label",
    "source_image",
    "source_label",
)
PREVIEW_CASES = 4
PREVIEW_VARIANTS = 4


@dataclass(frozen=True)
class SynthesisConfig:
    """How ``labels_to_image`` draws intensities (arbitrary units before the final [0, 1] rescaling).

    Attributes:
        mean_range: range of the mean intensity drawn per label value.
        std_range: range of the within-region standard deviation per label value.
        blur_sigma_vox: range of the Gaussian blur sigma per axis, voxels.
        bias_coeff_range: range of the bias field's polynomial coefficients (log field).
        noise_std: largest standard deviation of the additive Gaussian noise.
        gamma_range: range of the gamma applied to the min–max rescaled image.
    """

    mean_range: Range = (0.0, 1.0)
    std_range: Range = (0.0, 0.1)
    blur_sigma_vox: Range = (0.3, 1.0)
    bias_coeff_range: Range = (0.0, 0.1)
    noise_std: float = 0.05
    gamma_range: Range = (0.6, 1.6)

    def __post_init__(self) -> None:
        problems = [
            f"{f.name} must be two numbers [low, high] with low ≤ high, got {getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name != "noise_std" and not _is_range(getattr(self, f.name))
        ]
        if not (_is_number(self.noise_std) and self.noise_std >= 0):
            problems.append(f"noise_std must be a number ≥ 0, got {self.noise_std!r}")
        if _is_range(self.std_range) and self.std_range[0] < 0:
            problems.append("std_range must not be negative")
        if problems:
            raise MedvolError(None, "invalid synthesis config: " + "; ".join(problems))

    def corruption(self) -> AugmentConfig:
        """The image-only stages that follow the Gaussian draw, each applied every time."""
        return AugmentConfig(
            affine_prob=0.0,
            bias_prob=1.0,
            bias_coeff_range=self.bias_coeff_range,
            blur_prob=1.0,
            blur_sigma_vox=self.blur_sigma_vox,
            noise_prob=1.0,
            noise_std=self.noise_std,
            brightness_prob=0.0,
            contrast_prob=0.0,
            gamma_prob=1.0,
            gamma_range=self.gamma_range,
        )


def synthesis_config_from_dict(values: Mapping[str, Any]) -> SynthesisConfig:
    """``SynthesisConfig`` from a plain dict; unknown keys raise ``MedvolError`` naming them."""
    return config_from_dict(SynthesisConfig, values, "synthesis")


def labels_to_image(
    label: np.ndarray,
    seed: Seed,
    config: SynthesisConfig | None = None,
    spatial: AugmentConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a random-contrast image for a label map (SynthSeg-style).

    The spatial augmentation (if any) deforms the label map first, by nearest
    neighbour, and the image is then drawn on the deformed map: image and label
    share one geometry by construction, and the Gaussian texture is not
    smoothed by resampling (SynthSeg's order; equivalent to deforming both).

    Args:
        label: label map ``(1, X, Y, Z)`` of an integer dtype.
        seed: an int or a ``SeedSequence``; the same seed gives the same pair.
        config: intensity model; default ``SynthesisConfig()``.
        spatial: spatial augmentation (only its spatial stages are used);
            ``None`` keeps the label map as it is.

    Returns:
        ``(image, label)``: image ``(1, X, Y, Z)`` float32 in [0, 1]; label
        ``(1, X, Y, Z)`` with the input's dtype.
    """
    config = config or SynthesisConfig()
    label = np.asarray(label)
    if label.ndim != 4 or label.shape[0] != 1 or label.dtype.kind not in "biu":
        raise MedvolError(
            None, f"label must be an integer array (1, X, Y, Z), got {label.dtype} {label.shape}"
        )
    if spatial is not None:
        label = build_augmenter(spatial.spatial_only(), spawn_seed(seed, 0))({"label": label})["label"]
    rng = np.random.default_rng(spawn_seed(seed, 1))
    values, region = np.unique(label, return_inverse=True)
    means = rng.uniform(*config.mean_range, size=values.size)
    stds = rng.uniform(*config.std_range, size=values.size)
    region = region.reshape(label.shape)
    image = rng.normal(means[region], stds[region]).astype(np.float32)
    image = build_augmenter(config.corruption(), spawn_seed(seed, 2))({"image": image})["image"]
    low, high = float(image.min()), float(image.max())
    image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return image.astype(np.float32), label


@dataclass
class SynthesisReport:
    """What ``synthesize_cases`` did.

    Attributes:
        out_dir: the output folder.
        written: image files written by this call (each with its label).
        skipped: variants already on disk from an earlier call.
        errors: ``(source label path, problem)`` for each case that was skipped.
        manifest: ``manifest.csv`` listing every variant in ``out_dir``.
        preview: ``preview.png``, or ``None`` when there is nothing to show.
    """

    out_dir: Path
    written: list[Path] = field(default_factory=list)
    skipped: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    manifest: Path | None = None
    preview: Path | None = None


CaseFiles = tuple[str | Path | Sequence[str | Path], str | Path]


def synthesize_cases(
    cases: Sequence[CaseFiles],
    per_case: int,
    out_dir: str | Path,
    seed: int,
    mode: Mode = "augment",
    *,
    augment: AugmentConfig | None = None,
    synthesis: SynthesisConfig | None = None,
) -> SynthesisReport:
    """Write ``per_case`` variants of every labelled case as NIfTI image + label.

    Layout (``medvol index`` reads it as a flat dataset)::

        out_dir/images/<case>_<aug|syn><NNN>.nii.gz   float32, the source affine
        out_dir/labels/<case>_<aug|syn><NNN>.nii.gz   integer labels, same grid
        out_dir/manifest.csv                          one row per variant (seed, mode, config hash,
                                                      output and source paths)
        out_dir/preview.png                           middle slices with label overlays

    ``augment`` mode standardises each channel (around its edge value, so
    voxels rotated in from outside the field of view get the background's
    value), applies ``augment`` (default ``AugmentConfig()``) and maps
    intensities back to the source's scale, so a variant can be preprocessed
    like a real case. ``labels-to-image`` mode
    ignores the source image and draws one with ``labels_to_image``, using the
    spatial stages of ``augment``.

    Variant ``k`` of a case is seeded from ``(seed, case id, k)`` only, so the
    output is the same whatever the order or number of cases. No two variants
    of a case are byte-identical: a draw that repeats an earlier variant
    ``j < k`` is drawn again from the next child seed. A rerun skips
    the variants already written (writes are atomic) and adds missing ones;
    the manifest also keeps the variants written by earlier calls. A
    case that cannot be read is recorded in ``errors`` and the others go on.

    Args:
        cases: ``(image, label)`` paths per case; ``image`` may be a sequence of
            channel files. The case id is the label's file name without suffix.
        per_case: number of variants per case.
        out_dir: output folder (created).
        seed: base seed.
        mode: ``"augment"`` or ``"labels-to-image"``.
        augment: augmentation config (spatial stages only in ``labels-to-image``).
        synthesis: intensity model for ``labels-to-image``.

    Raises:
        MedvolError: a bad request: two cases with one id, ``per_case`` < 1, an
            unknown mode, or ``out_dir`` already holding variants made with another
            seed, mode or config (a resume must not mix them).
    """
    out_dir = Path(out_dir)
    if mode not in ("augment", "labels-to-image"):
        raise MedvolError(None, f"unknown synthesis mode {mode!r}; use 'augment' or 'labels-to-image'")
    if per_case < 1:
        raise MedvolError(None, f"per_case must be ≥ 1, got {per_case}")
    augment = augment or AugmentConfig()
    sources = [(_as_paths(image), Path(label)) for image, label in cases]
    ids = [_case_id(label) for _, label in sources]
    duplicates = sorted({case_id for case_id in ids if ids.count(case_id) > 1})
    if duplicates:
        raise MedvolError(None, f"several cases share the id(s) {', '.join(duplicates)} (label file names)")
    synthesis = synthesis or SynthesisConfig()
    used = [augment] if mode == "augment" else [augment.spatial_only(), synthesis]
    config = hashlib.sha256(repr(used).encode()).hexdigest()[:12]
    manifest_path = out_dir / "manifest.csv"
    previous = _previous_rows(manifest_path, (str(seed), mode, config))

    report = SynthesisReport(out_dir=out_dir)
    rows = {(row["case_id"], row["variant"]): row for row in previous if _exists(out_dir, row)}
    tag = "aug" if mode == "augment" else "syn"
    for case_id, (image_paths, label_path) in track(
        list(zip(ids, sources, strict=True)), "synthesize", "case", logger
    ):
        targets = [
            (
                out_dir / "images" / f"{case_id}_{tag}{k:03d}.nii.gz",
                out_dir / "labels" / f"{case_id}_{tag}{k:03d}.nii.gz",
            )
            for k in range(per_case)
        ]
        todo = [k for k, pair in enumerate(targets) if not all(path.is_file() for path in pair)]
        report.skipped += per_case - len(todo)
        try:
            if todo:
                image, label = load_source(image_paths, label_path)
            made = _variant_digests(targets[: max(todo, default=0)])
            for k in todo:
                variant_seed = spawn_seed(seed, _case_key(case_id), k)
                earlier = {digest for j, digest in made.items() if j < k}
                if mode == "augment":
                    array, label_array = _augment(image.array, label.array, augment, variant_seed, earlier)
                else:
                    array, label_array = _synthesize(label.array, variant_seed, synthesis, augment, earlier)
                made[k] = _digest(array, label_array)
                meta = {"source_path": str(label_path), "synthesis": mode, "seed": seed, "variant": k}
                save(Volume(label_array, label.affine, meta), targets[k][1])
                # the source's modality travels with the image (its sidecar), for `medvol plan`
                modality = {"modality": image.meta["modality"]} if image.meta.get("modality") else {}
                save(Volume(array, image.affine, {**meta, **modality}), targets[k][0])
                report.written.append(targets[k][0])
        except MedvolError as error:
            report.errors.append((str(label_path), str(error)))
        for k, (image_out, label_out) in enumerate(targets):
            if image_out.is_file() and label_out.is_file():
                rows[(case_id, str(k))] = {
                    "case_id": case_id,
                    "variant": str(k),
                    "mode": mode,
                    "seed": str(seed),
                    "config": config,
                    "image": image_out.relative_to(out_dir).as_posix(),
                    "label": label_out.relative_to(out_dir).as_posix(),
                    "source_image": ";".join(str(p) for p in image_paths),
                    "source_label": str(label_path),
                }
    listed = [rows[key] for key in sorted(rows, key=lambda key: (key[0], int(key[1])))]
    report.manifest = _write_if_changed(manifest_path, _csv_text(listed))
    preview = out_dir / "preview.png"
    if listed and (report.written or not preview.is_file()):
        _write_preview(out_dir, listed, preview)
    report.preview = preview if listed else None
    return report


def _as_paths(image: str | Path | Sequence[str | Path]) -> list[Path]:
    return [Path(image)] if isinstance(image, str | Path) else [Path(p) for p in image]


def _case_id(label: Path) -> str:
    suffix = full_suffix(label)
    return label.name[: len(label.name) - len(suffix)] if suffix else label.name


def _case_key(case_id: str) -> int:
    """A stable 64-bit integer for a case id (a spawn key; Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:8], "big")


def _previous_rows(manifest: Path, run: tuple[str, str, str]) -> list[dict[str, str]]:
    """The rows of an earlier run's manifest; refuses another seed, mode or config (never mix runs)."""
    if not manifest.is_file():
        return []
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    runs = {(row.get("seed"), row.get("mode"), row.get("config")) for row in rows}
    if runs - {run}:
        found = ", ".join(f"seed {s}, mode {m}, config {c}" for s, m, c in sorted(runs, key=str))
        raise MedvolError(
            manifest.parent,
            f"holds variants made with {found}, not seed {run[0]}, mode {run[1]}, config {run[2]}; "
            "resume with the same seed, mode and config, or use another folder",
        )
    return rows


def _exists(out_dir: Path, row: Mapping[str, str]) -> bool:
    return (out_dir / row["image"]).is_file() and (out_dir / row["label"]).is_file()


def load_source(image_paths: list[Path], label_path: Path) -> tuple[Volume, Volume]:
    """A source case: channels stacked as float32, integer label map on their grid (``load_files``)."""
    from medvol.data.loading import load_files

    image, label = load_files(image_paths, label_path)
    assert label is not None
    return Volume(image.array.astype(np.float32, copy=False), image.affine, image.meta), label


MAX_DRAWS = 32


def _digest(image: np.ndarray, label: np.ndarray) -> bytes:
    """A variant's identity: the SHA-256 of its float32 image and int64 label voxels."""
    digest = hashlib.sha256(np.ascontiguousarray(image, np.float32).tobytes())
    digest.update(np.ascontiguousarray(label, np.int64).tobytes())
    return digest.digest()


def _variant_digests(targets: Sequence[tuple[Path, Path]]) -> dict[int, bytes]:
    """``{k: digest}`` of a case's variants on disk (a variant redone on resume must not repeat them)."""
    return {
        k: _digest(load(image).array, load(label).array)
        for k, (image, label) in enumerate(targets)
        if image.is_file() and label.is_file()
    }


def _synthesize(
    label: np.ndarray,
    seed: np.random.SeedSequence,
    synthesis: SynthesisConfig,
    spatial: AugmentConfig,
    made: set[bytes],
) -> tuple[np.ndarray, np.ndarray]:
    """``labels_to_image`` with ``seed``; drawn again (from its children) if it repeats an earlier variant."""
    for draw in [seed, *seed.spawn(MAX_DRAWS - 1)]:
        image, moved = labels_to_image(label, draw, synthesis, spatial)
        if _digest(image, moved) not in made:
            return image, moved
    raise MedvolError(None, f"every one of {MAX_DRAWS} draws repeated an earlier variant")


def _augment(
    image: np.ndarray,
    label: np.ndarray,
    config: AugmentConfig,
    seed: np.random.SeedSequence,
    made: set[bytes] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Augment in standardised units, then return to the source's intensity scale.

    The image is standardised around its edge value (``edge_value``), not its
    mean, so the voxels a rotation or shift brings in from outside the field of
    view (0 in standardised units) get the value of the volume's border, the
    background, rather than a flat mean grey.

    A draw in which no stage fired would copy the case (which ``medvol index``
    then flags as a duplicate), and one equal to an earlier variant of the case
    (digest in ``made``; possible when only discrete stages such as flips
    fire) would repeat it: such draws are drawn again from the next child seed,
    so every variant differs from its source and from the others, and the
    result stays deterministic.
    """
    made = made if made is not None else set()
    edge = edge_value(image)
    std = image.std(axis=(1, 2, 3), keepdims=True) + 1e-8
    standardised = ((image - edge) / std).astype(np.float32)
    for draw in seed.spawn(MAX_DRAWS):
        sample = build_augmenter(config, draw)({"image": standardised, "label": label})
        if np.array_equal(sample["image"], standardised) and np.array_equal(sample["label"], label):
            continue
        variant = (sample["image"] * std + edge).astype(np.float32)
        if _digest(variant, sample["label"]) not in made:
            return variant, sample["label"]
    raise MedvolError(
        None,
        f"in {MAX_DRAWS} draws the augmentation changed nothing or repeated an earlier variant; "
        "raise its probabilities or ask for fewer variants per case",
    )


def edge_value(image: np.ndarray) -> np.ndarray:
    """The median of the voxels on the six faces of each channel: ``(C, 1, 1, 1)`` (the background)."""
    faces = [
        np.moveaxis(image, axis, 1)[:, index].reshape(len(image), -1)
        for axis in (1, 2, 3)
        for index in (0, -1)
    ]
    return np.median(np.concatenate(faces, axis=1), axis=1).reshape(-1, 1, 1, 1).astype(np.float32)


def _csv_text(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_if_changed(path: Path, text: str) -> Path:
    if not (path.is_file() and path.read_text() == text):
        with atomic_path(path) as temporary:
            temporary.write_text(text)
    return path


def _write_preview(out_dir: Path, rows: list[dict[str, str]], path: Path) -> None:
    """A grid of middle axial slices (one row per case, one column per variant) with label overlays."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by_case: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_case.setdefault(row["case_id"], []).append(row)
    shown = [variants[:PREVIEW_VARIANTS] for variants in list(by_case.values())[:PREVIEW_CASES]]
    n_rows, n_cols = len(shown), max(len(variants) for variants in shown)
    figure = Figure(figsize=(2.2 * n_cols, 2.2 * n_rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, variants in enumerate(shown):
        for j, row in enumerate(variants):
            image = load(out_dir / row["image"]).array[0]
            label = load(out_dir / row["label"]).array[0]
            z = image.shape[2] // 2
            ax = axes[i, j]
            ax.imshow(image[:, :, z].T, cmap="gray", origin="lower")
            overlay = np.ma.masked_equal(label[:, :, z].T, 0)
            ax.imshow(
                overlay, cmap="tab10", vmin=0, vmax=9, alpha=0.45, origin="lower", interpolation="nearest"
            )
            ax.set_title(f"{row['case_id']} #{row['variant']}", fontsize=7)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
