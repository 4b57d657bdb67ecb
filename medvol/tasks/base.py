"""What every task shares: the datasets of a run, the fold, the cases a run is scored on.

A task is one kind of data (``data.task``): it builds the training and
validation datasets, prepares one model input from a ``Volume`` exactly as
training did, and says what an evaluation scores. Nothing outside
``medvol.tasks`` asks which kind of data a run was trained on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from medvol.errors import MedvolError
from medvol.logs import get_logger

if TYPE_CHECKING:
    from medvol.augment import Augmenter
    from medvol.augment.batched import BatchAugmenter
    from medvol.augment.mixing import BatchMixer
    from medvol.config import ExperimentConfig
    from medvol.data.cases import Case, IndexReport
    from medvol.data.clips import ClipDataset
    from medvol.data.dataset import ArrayClassificationDataset, FileClassificationDataset, SegmentationDataset
    from medvol.data.splits import Fold
    from medvol.engine.distributed import Runtime
    from medvol.engine.run_folder import InputSpec, RunFolder
    from medvol.transforms import Normalizer, PreprocessConfig, PreprocessRecord
    from medvol.volume import Volume

logger = get_logger(__name__)

Output = Literal["segmentation", "classification"]


@dataclass
class TaskData:
    """Training and validation datasets plus what a run records about them.

    Attributes:
        train, val: datasets of ``Sample`` dicts (``medvol.data.dataset``).
        split: written to ``split.json`` (case ids per split).
        fingerprint: written to ``fingerprint.json``.
        normalizer: the normaliser fitted on the training cases (``None``
            where inputs need none).
        input_spec: written to ``input.json``: what inference must prepare.
    """

    train: SegmentationDataset | FileClassificationDataset | ArrayClassificationDataset | ClipDataset
    val: SegmentationDataset | FileClassificationDataset | ArrayClassificationDataset | ClipDataset
    split: dict[str, Any]
    fingerprint: dict[str, Any]
    normalizer: Normalizer | None
    input_spec: InputSpec


@dataclass(frozen=True)
class InputRecipe:
    """What a trained run prepares its inputs with.

    Attributes:
        preprocess: the grid scans are put on (``preprocess`` of the config).
        normalizer: the normaliser fitted on the training cases (``None``
            where the task uses none).
        spec: what the model takes (``input.json``).
    """

    preprocess: PreprocessConfig
    normalizer: Normalizer | None
    spec: InputSpec


@dataclass
class ModelInput:
    """One scan prepared as training prepared it.

    Attributes:
        array: ``(C, X, Y, Z)`` float32, what the network sees (a segmenter's
            sliding windows run over it); for a clip classifier ``(K, C, X, Y, T)``,
            K clips whose logits are averaged (``medvol.engine.inference.classify``).
        affine: its voxel → RAS mm affine.
        record: how to map an output on this grid back to the scan's own grid
            (``medvol.transforms.invert``); ``None`` where no output is mapped back.
    """

    array: np.ndarray
    affine: np.ndarray
    record: PreprocessRecord | None = None


@dataclass
class Selection:
    """The cases an evaluation scores, those it cannot, and where they came from."""

    cases: list[Case]
    errors: list[dict[str, Any]]
    source: str
    root: Path


class Task(ABC):
    """One kind of data; see the module docstring.

    Attributes:
        kind: the ``data.task`` value that chooses it.
        output: what the model predicts: a label map per voxel or a class per scan.
        input_description: how a scan becomes the model's input, in a sentence
            (recorded by ``medvol predict``).
    """

    kind: ClassVar[str]
    output: ClassVar[Output]
    input_description: ClassVar[str]

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config

    @abstractmethod
    def build_data(self, runtime: Runtime, run: RunFolder) -> TaskData:
        """Split, fitted normaliser and datasets (augmentation on the training side only)."""

    @abstractmethod
    def prepare_input(self, recipe: InputRecipe, scan: Volume) -> ModelInput:
        """``scan`` ``(C, X, Y, Z)`` as the model's input, exactly as training prepared it."""

    def describe_input(self) -> str:
        """How a scan becomes the model's input, in a sentence (``input_description`` unless the
        config changes it)."""
        return self.input_description

    def load_normalizer(self, stored: dict[str, Any] | None) -> Normalizer | None:
        """The fitted normaliser a checkpoint recorded (per-scan z-score when none was)."""
        from medvol.transforms import Normalizer, ZScore

        return Normalizer.from_dict(stored) if stored else ZScore(per_scan=True)

    # -- the model card (medvol.report): what only the task knows about its data

    def card_data(self, split: dict[str, Any], fingerprint: dict[str, Any]) -> list[tuple[str, str]]:
        """Rows of the model card's data table for a case folder or manifest."""
        data = self.config.data
        skipped = split.get("skipped") or []
        if split.get("method") == "separate":
            described = f"separate: every usable case trains; validation cases from `{split.get('val_root')}`"
        else:
            described = (
                f"{split.get('method', 'unknown')}, fold {split.get('fold')} of {data.split.n_splits} "
                f"(seed {data.split.seed})"
            )
        return [
            (
                "Cases",
                f"{fingerprint.get('cases', '?')} case ids found, {fingerprint.get('usable_pairs', '?')} "
                f"usable ({fingerprint.get('layout', '?')} layout)",
            ),
            ("Split", described),
            ("Training cases", str(len(split.get("train") or []))),
            ("Validation cases", f"{len(split.get('val') or [])} (also select the checkpoint)"),
            ("Unusable cases skipped", f"{len(skipped)}" + (f": {', '.join(skipped)}" if skipped else "")),
        ]

    def card_inputs(self, normalizer: dict[str, Any] | None) -> list[str]:
        """Model-card sentences on how inputs are made (``normalizer``: the run's ``normalizer.json``)."""
        written = self.config.model_dump(mode="json")["preprocess"]
        described = ", ".join(f"{key}: {value}" for key, value in written.items())
        items = [f"Preprocessing: {described or 'defaults (no resampling)'}."]
        if normalizer:
            params = ", ".join(f"{key}: {value}" for key, value in (normalizer.get("params") or {}).items())
            fitted = "fitted on the training cases only" if normalizer.get("learned") else "per scan"
            items.append(f"Intensity normalisation: `{normalizer.get('type')}` {params} ({fitted}).")
        return items

    def card_provenance(self, split: dict[str, Any], fingerprint: dict[str, Any]) -> list[str]:
        """Model-card limitations of the training data."""
        return [
            f"Trained on {len(split.get('train') or [])} cases from one folder (`{self.config.data.root}`); "
            "whether they come from one site or several is not recorded. Behaviour on other scanners, "
            "sites, protocols or populations is unknown."
        ]

    def check_channels(self, recipe: InputRecipe, scan: Volume) -> None:
        """Refuse a scan with another number of channels than the model takes."""
        expected = recipe.spec.channels
        if scan.num_channels != expected:
            raise MedvolError(
                scan.meta.get("source_path"),
                f"the model takes {expected} channel(s), the scan has {scan.num_channels}",
            )


# ----------------------------------------------------------------------------- shared steps


def index_cases(config: ExperimentConfig, runtime: Runtime, classes: list[int] | None = None) -> IndexReport:
    """``medvol index``'s checks of the dataset; says how many cases are skipped, refuses none usable."""
    return _indexed(config.data.root, runtime, classes, "", min_frames(config))


def index_validation_cases(
    config: ExperimentConfig, runtime: Runtime, classes: list[int] | None = None
) -> IndexReport | None:
    """``medvol index``'s checks of ``split.val_root`` (``split.method: separate``); ``None`` otherwise."""
    root = config.data.split.val_root
    if config.data.split.method != "separate" or root is None:
        return None
    return _indexed(root, runtime, classes, " in split.val_root", min_frames(config))


def min_frames(config: ExperimentConfig) -> int | None:
    """The fewest frames a clip needs (``data.clip``'s span); ``None`` without ``data.clip``."""
    return None if config.data.clip is None else config.data.clip.span


def _indexed(
    root: Path, runtime: Runtime, classes: list[int] | None, which: str, shortest: int | None
) -> IndexReport:
    from medvol.data.cases import validate

    report = validate(root, classes=classes, store=runtime.is_main, min_frames=shortest)
    if not report.usable:
        raise MedvolError(root, f"no usable cases{which} (see `medvol index`)")
    if runtime.is_main:
        logger.info(
            "checked %d case(s)%s, %d unchanged since the last check",
            report.checked,
            which,
            report.reused,
        )
    skipped = len(report.cases) - len(report.usable)
    if runtime.is_main and skipped:
        logger.warning(
            "skipping %d unusable case(s) of %d%s; see `medvol index` for why",
            skipped,
            len(report.cases),
            which,
        )
    return report


def training_augmenter(config: ExperimentConfig, runtime: Runtime) -> Augmenter | None:
    """The per-sample training augmenter, seeded with ``train.seed``: every stage of ``augment``
    where it runs per sample, only the k-space artefacts where it runs per batch (the rest is
    ``training_batch_augmenter``'s); ``None`` when it has nothing to do."""
    from medvol.augment import build_augmenter
    from medvol.augment.batched import resolve_where, sample_only_config

    augment = config.augment
    if augment is not None and resolve_where(augment, runtime.device, config.data.num_workers) == "batch":
        augment = sample_only_config(augment)
    return None if augment is None else build_augmenter(augment, seed=config.train.seed)


def training_batch_augmenter(config: ExperimentConfig, runtime: Runtime) -> BatchAugmenter | None:
    """The augmenter the training loop applies to each batch on the device (``augment.where``
    ``batch``, or ``auto`` resolved to it); reseeded every epoch with
    ``worker_seed(train.seed, rank, 0, epoch)``."""
    from medvol.augment.batched import BatchAugmenter, resolve_where

    augment = config.augment
    if augment is None or resolve_where(augment, runtime.device, config.data.num_workers) != "batch":
        return None
    return BatchAugmenter(augment, seed=config.train.seed)


def training_mixer(config: ExperimentConfig) -> BatchMixer | None:
    """The batch mixing of ``augment.mix`` (``None`` when off); reseeded every epoch like the
    batch augmenter."""
    from medvol.augment.mixing import BatchMixer

    if config.augment is None or config.augment.mix == "none":
        return None
    return BatchMixer(config.augment, config.data.num_classes, seed=config.train.seed)


def choose_fold(
    config: ExperimentConfig,
    case_ids: list[str],
    patients: list[str | None],
    labels: list[int] | None = None,
    validation: IndexReport | None = None,
) -> Fold:
    """The configured fold of ``case_ids``; ``kfold`` keeps each patient in one fold and,
    given class ``labels`` (one per case), stratifies by class.

    With ``split.method: separate`` every case of ``case_ids`` trains and the
    usable cases of ``validation`` (``index_validation_cases``) validate;
    ``cases_of_fold`` then refuses a leak between the two.
    """
    from medvol.data.splits import grouped_folds, load_folds, nnunet_folds

    split = config.data.split
    if split.method == "separate":
        if validation is None:
            raise MedvolError(split.val_root, "split.method separate needs the indexed validation cases")
        return {"train": list(case_ids), "val": sorted(case.case_id for case in validation.usable)}
    if split.method == "nnunet":
        folds = nnunet_folds(case_ids, split.n_splits, split.seed)
    elif split.method == "kfold":
        groups = [p or c for p, c in zip(patients, case_ids, strict=True)]
        folds = grouped_folds(case_ids, groups, labels, split.n_splits, split.seed)
    elif split.method == "file" and split.file is not None:
        folds = load_folds(split.file)
    else:
        raise MedvolError(
            config.data.root, f"split.method {split.method!r} needs split.file or another method"
        )
    if split.fold >= len(folds):
        raise MedvolError(config.data.root, f"split.fold {split.fold} but only {len(folds)} folds")
    return folds[split.fold]


def refuse_leaks(config: ExperimentConfig, train: list[Case], validation: IndexReport) -> None:
    """Refuse a validation set sharing a case id, a patient id or an image's content with ``train``.

    Args:
        train: the training cases (of ``data.root``).
        validation: the indexed cases of ``split.val_root``.

    Raises:
        MedvolError: naming ``split.val_root``, the shared ids (patient ids are
            not named: they may identify a person) and what to do.
    """
    from medvol.data.cases import content_digest

    root, val_cases = config.data.root, validation.usable
    shared = sorted({case.case_id for case in train} & {case.case_id for case in val_cases})
    if shared:
        raise MedvolError(
            validation.root,
            f"{len(shared)} case id(s) are both in data.root ({root}) and in split.val_root, e.g. "
            f"{shared[:5]}: a case validated on would also be trained on (a leak); keep each case on "
            "one side",
        )
    patients = {case.patient_id for case in train if case.patient_id}
    both = patients & {case.patient_id for case in val_cases if case.patient_id}
    if both:
        raise MedvolError(
            validation.root,
            f"{len(both)} patient id(s) have cases both in data.root ({root}) and in split.val_root: "
            "scans of one patient on both sides make validation optimistic (a leak); keep each patient "
            "on one side",
        )
    # Equal content needs equal file sizes: only such training cases are hashed (DICOM folders: all,
    # when the validation set has DICOM folders too); the validation cases' digests come from their check.
    val_sizes = {_file_sizes(case) for case in val_cases}
    candidates = [case for case in train if _file_sizes(case) in val_sizes]
    val_by_content = {validation.digests[case.case_id]: case.case_id for case in val_cases}
    copies = sorted(
        f"{case.case_id} = {val_by_content[digest]}"
        for case in candidates
        if (digest := content_digest(case)) in val_by_content
    )
    if copies:
        raise MedvolError(
            validation.root,
            f"{len(copies)} training case(s) have the same image content as a validation case "
            f"(training = validation: {', '.join(copies[:5])}): a leak; keep each scan on one side",
        )


def _file_sizes(case: Case) -> tuple[int, ...] | None:
    """The byte sizes of a case's image files; ``None`` when one is a folder (a DICOM series), since
    a copied series may hold other files beside it."""
    if not all(path.is_file() for path in case.images):
        return None
    return tuple(path.stat().st_size for path in case.images)


def split_record(
    config: ExperimentConfig, fold: Fold, report: IndexReport, validation: IndexReport | None = None
) -> dict[str, Any]:
    """What ``split.json`` holds for a run on a case folder or manifest.

    With ``split.method: separate`` it also names both sides' folders
    (``root``, ``val_root``) and the unusable cases of the validation set
    (``val_skipped``); ``fold`` is then ``None``.
    """
    split = config.data.split
    if validation is None:
        return {"method": split.method, "fold": split.fold, **fold, "skipped": sorted(report.unusable_ids)}
    return {
        "method": split.method,
        "fold": None,
        "root": str(report.root),
        "val_root": str(validation.root),
        **fold,
        "skipped": sorted(report.unusable_ids),
        "val_skipped": sorted(validation.unusable_ids),
    }


def cases_of_fold(
    config: ExperimentConfig, fold: Fold, by_id: dict[str, Case], validation: IndexReport | None = None
) -> tuple[list[Case], list[Case]]:
    """The fold's training and validation cases; refuses a split naming unusable cases.

    With ``validation`` (``split.method: separate``) the validation cases are
    its usable cases, and a leak between the sides is refused (``refuse_leaks``).
    """
    val_by_id = by_id if validation is None else {case.case_id: case for case in validation.usable}
    missing = [c for c in fold["train"] if c not in by_id] + [c for c in fold["val"] if c not in val_by_id]
    if missing:
        raise MedvolError(config.data.root, f"the split names cases that are not usable: {missing[:5]}")
    train, val = [by_id[c] for c in fold["train"]], [val_by_id[c] for c in fold["val"]]
    if validation is not None:
        refuse_leaks(config, train, validation)
    return train, val


def select_cases(
    run: RunFolder, config: ExperimentConfig, manifest: Path | None, split: str, column: str
) -> Selection:
    """The cases of ``split`` in ``split.json`` (or of a manifest) with what they need to be scored.

    ``split.json``'s ids are looked up in ``data.root``; the ``val`` ids of a
    run with ``split.method: separate`` in ``split.val_root``. Every requested
    case, and every row of a manifest, is either selected or in ``errors``
    with its reason.

    Args:
        column: the manifest column holding the ground truth: ``label`` (a label
            map) or ``class``. The run's ``data.classes`` check label-map values only.

    Raises:
        MedvolError: the manifest is missing, not a CSV, or no case has a ground truth.
    """
    from medvol.data.cases import validate

    classes = config.data.classes if column == "label" else None
    if manifest is not None:
        if not manifest.is_file():
            raise MedvolError(manifest, "manifest not found")
        if manifest.suffix.lower() != ".csv":
            raise MedvolError(manifest, f"--cases expects a .csv manifest (case_id, image, {column} columns)")
        report = validate(manifest, classes=classes, min_frames=min_frames(config))
        found = [case.label if column == "label" else case.target for case in report.cases]
        if not any(value is not None for value in found):
            what = "label map" if column == "label" else "class"
            raise MedvolError(
                manifest,
                f"no case has a {what} (column '{column}'): evaluation needs the ground truth of every case",
            )
        wanted = [case.case_id for case in report.cases]
        source = str(manifest)
    else:
        wanted = run.split_ids(split)
        root = config.data.root
        if split == "val" and config.data.split.method == "separate" and config.data.split.val_root:
            root = config.data.split.val_root  # the run validated on another folder or manifest
        report = validate(root, classes=classes, only=set(wanted), min_frames=min_frames(config))
        source = f"split.json {split} ({root})"
    by_id = {case.case_id: case for case in report.usable}
    problems: dict[str, list[str]] = {}
    paths: dict[str, str | None] = {}
    for finding in report.findings:
        if finding.case_id is not None and finding.severity == "error":
            problems.setdefault(finding.case_id, []).append(f"{finding.kind}: {finding.message}")
            paths.setdefault(finding.case_id, finding.path)
    selected, errors = [], []
    for case_id in wanted:
        if case_id in by_id:
            selected.append(by_id[case_id])
        else:
            reason = "; ".join(problems.get(case_id, [])) or f"not found in {report.root}"
            errors.append(case_error(case_id, paths.get(case_id), f"not usable: {reason}"))
    # A manifest's rows that became no case (an unsafe or a repeated case id) are requested too.
    for finding in report.skipped_rows if manifest is not None else []:
        name = finding.case_id or f"row {finding.row}"
        errors.append(case_error(name, finding.path, f"not usable: {finding.kind}: {finding.message}"))
    return Selection(selected, errors, source, report.root)


def case_error(case_id: str, path: str | Path | None, problem: str) -> dict[str, Any]:
    """One entry of an evaluation summary's ``errors``."""
    return {"case_id": case_id, "path": None if path is None else str(path), "problem": problem}


@dataclass
class ScoredCases:
    """The cases a classifier is evaluated on, prepared one by one.

    Attributes:
        items: ``(case_id, target class, model input (C, X, Y, Z) float32)``,
            lazily; a case that cannot be prepared is appended to ``errors``
            instead of being yielded.
        errors: entries of the summary's ``errors`` (see ``case_error``).
        details: summary fields saying where the cases came from
            (``cases_source``, ``n_requested``, ...).
    """

    items: Iterator[tuple[str, int, np.ndarray]]
    errors: list[dict[str, Any]]
    details: dict[str, Any]
