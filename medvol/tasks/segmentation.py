"""Segmentation: label maps per case (``data.task: segmentation``).

Training sees random patches of the preprocessed, normalised cases
(``medvol.data.dataset.SegmentationDataset``); inference prepares a scan the
same way (``prepare_input``), runs sliding windows over the whole volume and
maps the probabilities back to the scan's own grid (``to_source_grid``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from medvol.engine.run_folder import InputSpec
from medvol.errors import MedvolError
from medvol.tasks.base import (
    InputRecipe,
    ModelInput,
    Task,
    TaskData,
    cases_of_fold,
    choose_fold,
    index_cases,
    index_validation_cases,
    split_record,
    training_augmenter,
)

if TYPE_CHECKING:
    from medvol.engine.distributed import Runtime
    from medvol.engine.run_folder import RunFolder
    from medvol.volume import Volume


class SegmentationTask(Task):
    """Scans with label maps: a case folder (``imagesTr/labelsTr``, ``images/labels``) or a manifest."""

    kind = "segmentation"
    output = "segmentation"
    input_description = (
        "each scan preprocessed and normalised as in training, segmented with sliding windows of "
        "data.patch_size, probabilities mapped back to the scan's own grid"
    )

    def build_data(self, runtime: Runtime, run: RunFolder) -> TaskData:
        from medvol.data.cache import VolumeCache
        from medvol.data.dataset import SegmentationDataset, fit_normalizer

        config = self.config
        report = index_cases(config, runtime, classes=config.data.classes)
        validation = index_validation_cases(config, runtime, classes=config.data.classes)
        by_id = {case.case_id: case for case in report.usable}
        ids = sorted(by_id)
        fold = choose_fold(config, ids, [by_id[c].patient_id for c in ids], validation=validation)
        train_cases, val_cases = cases_of_fold(config, fold, by_id, validation)
        preprocess = config.preprocess
        fitted = fit_normalizer(config.normalizer(), train_cases, preprocess)
        cache = VolumeCache(config.data.cache_dir or run.cache)
        seed, rank = config.train.seed, runtime.rank
        patch, augmenter = config.data.patch_size, training_augmenter(config, runtime)
        fingerprint = report.summary()
        if validation is not None:
            fingerprint["validation"] = validation.summary()
        return TaskData(
            train=SegmentationDataset(
                train_cases,
                preprocess,
                fitted,
                cache,
                patch,
                augmenter,
                seed,
                rank,
                foreground_fraction=config.data.foreground_fraction,
            ),
            val=SegmentationDataset(val_cases, preprocess, fitted, cache, None, None, seed, rank),
            split=split_record(config, fold, report, validation),
            fingerprint=fingerprint,
            normalizer=fitted,
            input_spec=self.input_spec(),
        )

    def card_data(self, split: dict[str, Any], fingerprint: dict[str, Any]) -> list[tuple[str, str]]:
        classes = ("Classes", f"{self.config.data.num_classes} including background 0")
        return [*super().card_data(split, fingerprint), classes]

    def card_inputs(self, normalizer: dict[str, Any] | None) -> list[str]:
        items = super().card_inputs(normalizer)
        patch = self.config.data.patch_size
        if patch is not None:
            size = "×".join(str(n) for n in patch)
            items.append(f"Training patches of {size} voxels; inference by sliding windows.")
        return items

    def input_spec(self) -> InputSpec:
        config = self.config
        return InputSpec(
            task=self.kind,
            channels=int(config.model.options.get("in_channels", 1)),
            num_classes=config.data.num_classes,
            patch_size=config.data.patch_size,
        )

    def prepare_input(self, recipe: InputRecipe, scan: Volume) -> ModelInput:
        """Preprocess and normalise ``scan`` as ``SegmentationDataset`` does; keeps the record."""
        from medvol.transforms.inputs import prepare_image

        self.check_channels(recipe, scan)
        assert recipe.normalizer is not None
        image, _, record = prepare_image(scan, None, recipe.preprocess, recipe.normalizer)
        return ModelInput(image.array, image.affine, record)

    def to_source_grid(self, probabilities: np.ndarray, prepared: ModelInput, scan: Volume) -> np.ndarray:
        """Probabilities ``(K, X, Y, Z)`` on the prepared grid → on ``scan``'s own grid (linear).

        Voxels outside the prepared grid (cropped away) get background.
        """
        from medvol.transforms import invert
        from medvol.volume import Volume

        if prepared.record is None:
            raise MedvolError(scan.meta.get("source_path"), "no preprocessing record to invert")
        classes = probabilities.shape[0]
        background = [1.0] + [0.0] * (classes - 1)
        on_source = invert(Volume(probabilities, prepared.affine, {}), prepared.record, fill_value=background)
        return on_source.array
