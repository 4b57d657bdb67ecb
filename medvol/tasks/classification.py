"""Classification of scans: one class per case, from scan files or from MedMNIST arrays.

``data.task: classification`` trains on scan files listed in a CSV manifest
with a ``class`` column: every case is preprocessed, normalised with
statistics fitted on the training fold, and centre-cropped/padded to the
fixed input shape ``data.input_shape``. With ``data.clip`` the cases are
clips (videos, DICOM cine loops; a manifest or a folder per class): frames
are resized, normalised and cut into clips of ``data.clip.frames`` frames
(``medvol.transforms.clips``), never preprocessed as scans; evaluation and
prediction average the logits of ``data.clip.eval_clips`` clips per video.

``data.task: medmnist-classification`` trains on a MedMNIST 3D ``.npz`` with
its official split: ``uint8`` volumes scaled by ``1/255`` (``medmnist_input``),
nothing else. A scan given to such a model at inference is scaled the same
way, so it must hold MedMNIST-range values (0–255); one of another shape is
reoriented to RAS and resized to the training shape.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvol.engine.run_folder import InputSpec
from medvol.errors import MedvolError
from medvol.logs import get_logger
from medvol.tasks.base import (
    InputRecipe,
    ModelInput,
    ScoredCases,
    Task,
    TaskData,
    case_error,
    cases_of_fold,
    choose_fold,
    index_cases,
    index_validation_cases,
    select_cases,
    split_record,
    training_augmenter,
)

if TYPE_CHECKING:
    from medvol.engine.distributed import Runtime
    from medvol.engine.run_folder import RunFolder
    from medvol.transforms import Normalizer
    from medvol.volume import Volume


logger = get_logger(__name__)


class ClassificationTask(Task):
    """What the two classification tasks share."""

    output = "classification"

    def input_spec(self, shape: tuple[int, int, int]) -> InputSpec:
        return InputSpec(
            task=self.kind,
            channels=int(self.config.model.options.get("in_channels", 1)),
            num_classes=self.config.data.num_classes,
            shape=shape,
        )

    def class_counts(self, targets: list[int]) -> dict[str, int]:
        return {str(k): targets.count(k) for k in range(self.config.data.num_classes)}

    @abstractmethod
    def scored_cases(
        self, recipe: InputRecipe, run: RunFolder, manifest: Path | None, split: str
    ) -> ScoredCases:
        """The cases of ``split`` (or of a manifest with a ``class`` column), prepared as in training."""


class ScanClassificationTask(ClassificationTask):
    """Scan files with a ``class`` per case (a CSV manifest)."""

    kind = "classification"
    input_description = (
        "trained on scan files: each scan preprocessed and normalised as in training, "
        "centre-cropped/padded to data.input_shape"
    )

    def describe_input(self) -> str:
        clip = self.config.data.clip
        if clip is None:
            return self.input_description
        return (
            f"trained on clips: frames resized and normalised as in training, clips of {clip.frames} "
            f"frames every {clip.stride}th frame, centre-cropped to {clip.size[0]}×{clip.size[1]}; "
            f"class probabilities from the logits averaged over {clip.eval_clips} evenly spread clip(s)"
        )

    def card_data(self, split: dict[str, Any], fingerprint: dict[str, Any]) -> list[tuple[str, str]]:
        counts = fingerprint.get("class_counts") or {}
        rows = [(f"Classes ({side})", _counts_text(counts.get(side) or {})) for side in ("train", "val")]
        return [*super().card_data(split, fingerprint), *rows]

    def card_inputs(self, normalizer: dict[str, Any] | None) -> list[str]:
        clip = self.config.data.clip
        if clip is not None:
            return [
                f"Clips of {clip.frames} frames, every {clip.stride}th frame, frames resized to "
                f"{clip.resize or 'their own size'} and cropped to {clip.size[0]}×{clip.size[1]} pixels; "
                f"training clips start at {clip.sampling} and are cropped at {clip.crop}, evaluation and "
                f"prediction average {clip.eval_clips} evenly spread centre-cropped clip(s).",
                *super().card_inputs(normalizer)[1:],  # no scan preprocessing
            ]
        size = "×".join(str(n) for n in self.shape)
        crop = f"Every case centre-cropped/padded to {size} voxels (padding with its minimum)."
        return [*super().card_inputs(normalizer), crop]

    @property
    def shape(self) -> tuple[int, int, int]:
        """The model's input ``(X, Y, Z)`` in voxels (``data.input_shape``), or for clips
        ``(X, Y, frames)`` (``data.clip``); the config requires one of them."""
        clip = self.config.data.clip
        if clip is not None:
            return (clip.size[0], clip.size[1], clip.frames)
        assert self.config.data.input_shape is not None
        return self.config.data.input_shape

    def build_data(self, runtime: Runtime, run: RunFolder) -> TaskData:
        from medvol.data.cache import VolumeCache
        from medvol.data.clips import ClipDataset, fit_clip_normalizer
        from medvol.data.dataset import FileClassificationDataset, class_index, fit_normalizer

        config = self.config
        shape = self.shape
        preprocess = config.preprocess
        if preprocess.crop == "foreground" and preprocess.foreground_from == "label":
            raise MedvolError(
                config.data.root,
                "preprocess.foreground_from: label cannot be used by a classifier (inference has no "
                "label map); use foreground_from: image",
            )
        report = index_cases(config, runtime)
        validation = index_validation_cases(config, runtime)
        sides = [report] if validation is None else [report, validation]
        for side in sides:
            without_class = [case.case_id for case in side.usable if case.target is None]
            if without_class:
                raise MedvolError(
                    side.root,
                    f"{len(without_class)} case(s) have no class (column 'class'), e.g. {without_class[:5]}",
                )
        by_id = {case.case_id: case for case in report.usable}
        targets = {
            case.case_id: class_index(case, config.data.num_classes) for side in sides for case in side.usable
        }  # a case id on both sides is refused as a leak by cases_of_fold
        ids = sorted(by_id)
        labels = [targets[c] for c in ids]
        fold = choose_fold(config, ids, [by_id[c].patient_id for c in ids], labels, validation)
        train_cases, val_cases = cases_of_fold(config, fold, by_id, validation)
        if config.data.clip is not None:
            fitted = fit_clip_normalizer(config.normalizer(), train_cases, config.data.clip)
        else:
            fitted = fit_normalizer(config.normalizer(), train_cases, preprocess, use_labels=False)
        cache = VolumeCache(config.data.cache_dir or run.cache)

        clip = config.data.clip

        def dataset(cases: list[Any], augment: Any) -> FileClassificationDataset | ClipDataset:
            labels = [targets[case.case_id] for case in cases]
            if clip is not None:
                training = augment is not False
                return ClipDataset(
                    cases, labels, clip, fitted, cache, training, config.train.seed, runtime.rank
                )
            return FileClassificationDataset(
                cases, labels, preprocess, fitted, cache, shape, augment, config.train.seed, runtime.rank
            )

        counts = {
            name: self.class_counts([targets[c] for c in names])
            for name, names in (("all", ids), ("train", fold["train"]), ("val", fold["val"]))
        }
        if validation is not None:  # "all": both sides
            counts["all"] = self.class_counts([targets[c] for c in fold["train"] + fold["val"]])
            for name, where in (("train", config.data.root), ("val", validation.root)):
                absent = [k for k, n in counts[name].items() if n == 0]
                if absent and runtime.is_main:
                    logger.warning(
                        "%s has no case of class(es) %s: %s",
                        where,
                        ", ".join(absent),
                        "the model cannot learn them"
                        if name == "train"
                        else "the validation AUC is undefined (NaN) and cannot select the checkpoint",
                    )
        return TaskData(
            train=dataset(train_cases, training_augmenter(config, runtime) if clip is None else True),
            val=dataset(val_cases, None if clip is None else False),
            split=split_record(config, fold, report, validation),
            fingerprint={
                **report.summary(),
                **({} if validation is None else {"validation": validation.summary()}),
                "input": "scan files" if clip is None else "clips",
                "shape": list(shape),
                "class_counts": counts,
            },
            normalizer=fitted,
            input_spec=self.input_spec(shape),
        )

    def prepare_input(self, recipe: InputRecipe, scan: Volume) -> ModelInput:
        """Preprocess, normalise, centre-crop/pad as ``FileClassificationDataset`` does; for clips,
        ``data.clip.eval_clips`` uniform clips ``(K, C, X, Y, frames)`` (``medvol.transforms.clips``)."""
        from medvol.transforms.clips import evaluation_clips, prepare_video
        from medvol.transforms.inputs import classifier_crop, prepare_image

        self.check_channels(recipe, scan)
        clip = self.config.data.clip
        if clip is not None:
            assert recipe.normalizer is not None
            video = prepare_video(scan, clip, recipe.normalizer)
            return ModelInput(evaluation_clips(video.array, clip), video.affine)
        assert recipe.normalizer is not None and recipe.spec.shape is not None
        image, _, _ = prepare_image(scan, None, recipe.preprocess, recipe.normalizer)
        return ModelInput(classifier_crop(image.array, recipe.spec.shape), image.affine)

    def scored_cases(
        self, recipe: InputRecipe, run: RunFolder, manifest: Path | None, split: str
    ) -> ScoredCases:
        """``split.json``'s ids or a manifest's cases; an unreadable or class-less case is an error."""
        from medvol.data.cases import load_images
        from medvol.data.dataset import class_index

        selection = select_cases(run, self.config, manifest, split, "class")
        errors = selection.errors
        requested = len(selection.cases) + len(errors)

        def items() -> Iterator[tuple[str, int, np.ndarray]]:
            for case in selection.cases:
                try:
                    target = class_index(case, self.config.data.num_classes)
                    prepared = self.prepare_input(recipe, load_images(case))
                except MedvolError as error:
                    errors.append(case_error(case.case_id, error.path, error.problem))
                    continue
                yield case.case_id, target, prepared.array

        details = {
            "cases_source": selection.source,
            "cases_root": str(selection.root),
            "n_requested": requested,
        }
        return ScoredCases(items(), errors, details)


class MedMNISTTask(ClassificationTask):
    """A MedMNIST 3D ``.npz`` with its official split (inputs ``uint8 / 255``)."""

    kind = "medmnist-classification"
    input_description = (
        "MedMNIST-trained: each scan reoriented to RAS and scaled by 1/255 as the training arrays were "
        "(values must lie within 0-255), resized to the training shape (trilinear, anti-aliased) only "
        "when its shape differs"
    )

    def build_data(self, runtime: Runtime, run: RunFolder) -> TaskData:
        from medvol.data.dataset import ArrayClassificationDataset
        from medvol.io.medmnist import load_medmnist

        config = self.config
        if config.data.split.method != "official":
            raise MedvolError(
                config.data.root, "MedMNIST files come with their official split: use split.method: official"
            )
        splits = load_medmnist(config.data.root)
        train, val = splits["train"], splits["val"]
        seed = config.train.seed
        shape = tuple(int(n) for n in train.images.shape[1:])
        return TaskData(
            train=ArrayClassificationDataset(
                train.images, train.labels, training_augmenter(config, runtime), seed, runtime.rank, "train"
            ),
            val=ArrayClassificationDataset(val.images, val.labels, None, seed, runtime.rank, "val"),
            split={
                "method": "official",
                "train": len(train.labels),
                "val": len(val.labels),
                "test": "not used in training",
            },
            fingerprint={
                "cases": {name: len(s.labels) for name, s in splits.items()},
                "class_counts": {
                    name: {
                        str(v): int(c) for v, c in zip(*np.unique(s.labels, return_counts=True), strict=True)
                    }
                    for name, s in splits.items()
                },
                "shape": list(shape),
            },
            normalizer=None,
            input_spec=self.input_spec((shape[0], shape[1], shape[2])),
        )

    def load_normalizer(self, stored: dict[str, Any] | None) -> Normalizer | None:
        return None

    def card_data(self, split: dict[str, Any], fingerprint: dict[str, Any]) -> list[tuple[str, str]]:
        use = {"train": "training", "val": "validation, checkpoint selection", "test": "held out"}
        rows = [
            ("Volumes", f"{_shape_text(fingerprint.get('shape'))} voxels, uint8"),
            ("Split", f"{split.get('method', 'unknown')} (the file's own train/val/test split)"),
        ]
        for name, count in (fingerprint.get("cases") or {}).items():
            balance = (fingerprint.get("class_counts") or {}).get(name, {})
            rows.append((f"{name} cases", f"{count} ({_counts_text(balance)}); {use.get(name, '')}"))
        return rows

    def card_inputs(self, normalizer: dict[str, Any] | None) -> list[str]:
        return [
            "Voxels are divided by 255 (uint8 to [0, 1]); no resampling, no other normalisation.",
            "The volumes carry no physical spacing; medvol treats them as 1 mm isotropic.",
        ]

    def card_provenance(self, split: dict[str, Any], fingerprint: dict[str, Any]) -> list[str]:
        return [
            f"Trained on {split.get('train')} cases of one public dataset (`{self.config.data.root.name}`); "
            "behaviour on other scanners, sites, protocols or populations is unknown.",
            f"Inputs are small downsampled volumes ({_shape_text(fingerprint.get('shape'))} voxels) without "
            "physical spacing; results do not transfer to full-resolution imaging.",
        ]

    def scored_cases(
        self, recipe: InputRecipe, run: RunFolder, manifest: Path | None, split: str
    ) -> ScoredCases:
        """A split of the run's ``.npz`` (``val`` or ``test``); manifests are refused."""
        from medvol.data.dataset import medmnist_input
        from medvol.io.atomic import file_sha256
        from medvol.io.medmnist import load_medmnist

        root = self.config.data.root
        if manifest is not None:
            raise MedvolError(
                manifest,
                "a MedMNIST classifier is evaluated on the splits of its .npz file: use --split val|test",
            )
        data = load_medmnist(root)[split]
        if len(data.labels) == 0:
            raise MedvolError(root, f"the {split} split is empty")
        if tuple(data.images.shape[1:]) != recipe.spec.shape:
            raise MedvolError(
                root,
                f"volumes are {list(data.images.shape[1:])} but the run was trained on "
                f"{list(recipe.spec.shape or ())}",
            )
        items = (
            (f"{split}-{index:05d}", int(target), medmnist_input(image))
            for index, (image, target) in enumerate(zip(data.images, data.labels, strict=True))
        )
        details = {
            "cases_source": f"{root} ({split}_images, {split}_labels)",
            "data_sha256": file_sha256(root),
            "n_requested": len(data.labels),
        }
        return ScoredCases(items, [], details)

    def prepare_input(self, recipe: InputRecipe, scan: Volume) -> ModelInput:
        """``scan`` reoriented to RAS and scaled by 1/255 as the training arrays were; resized
        (trilinear, anti-aliased) only when its shape differs from the training shape.

        Raises:
            MedvolError: another number of channels, or values outside MedMNIST's 0–255.
        """
        from medvol.transforms.inputs import medmnist_input, resize
        from medvol.transforms.preprocess import reorient

        self.check_channels(recipe, scan)
        shape = recipe.spec.shape
        assert shape is not None
        low, high = float(scan.array.min()), float(scan.array.max())
        if low < 0 or high > 255:
            raise MedvolError(
                scan.meta.get("source_path"),
                f"values span [{low:g}, {high:g}], but this MedMNIST-trained classifier takes volumes "
                "in MedMNIST's 0-255 range (it saw uint8 / 255 in training); scale the scan as "
                "MedMNIST does first",
            )
        oriented, _ = reorient(scan, "RAS")
        array = medmnist_input(oriented.array)
        if tuple(oriented.shape) != shape:
            array = resize(array, shape)
        return ModelInput(array, oriented.affine)


def _shape_text(shape: Any) -> str:
    """``28×28×28`` from a list of sizes; ``?`` otherwise."""
    return "×".join(str(n) for n in shape) if isinstance(shape, list | tuple) else "?"


def _counts_text(counts: dict[str, Any]) -> str:
    """``class 0: 12, class 1: 4``."""
    return ", ".join(f"class {k}: {v}" for k, v in counts.items())


def _counts(labels: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts, strict=True)}
