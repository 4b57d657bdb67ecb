"""Segmentation scores: each case segmented on its own grid and compared with its label map.

Dice, HD95 and ASSD in mm (the label's spacing) and the volume difference in
mL, per class and case (``medvol.metrics``), with case-level bootstrap CIs;
the predicted label maps are kept in the evaluation folder.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvol.engine.run_folder import EvaluationFolder
from medvol.errors import MedvolError
from medvol.io.atomic import atomic_path
from medvol.logs import get_logger, track
from medvol.metrics import SEGMENTATION_VALUES, EmptyPolicy, SegmentationAccumulator, bootstrap_ci
from medvol.tasks.base import case_error, select_cases

if TYPE_CHECKING:
    from medvol.config import ExperimentConfig
    from medvol.engine.inference import TrainedModel

logger = get_logger(__name__)


def evaluate_segmentation(
    trained: TrainedModel,
    cases_path: Path | None,
    split: str,
    out_dir: Path,
    flip_tta: bool,
    largest_component: bool,
    policy: EmptyPolicy,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """Segment each case on its own grid and score it against its label map; see the package docstring.

    ``flip_tta`` and ``largest_component`` are passed to :func:`medvol.engine.inference.segment`.
    """
    from medvol.data.cases import load_case
    from medvol.engine.inference import segment, tta_flip_axes
    from medvol.evaluation.overlays import OverlaySlices, overlay_slices, save_overlays
    from medvol.io import save
    from medvol.volume import Volume

    config = trained.config
    flip_axes = tta_flip_axes(trained) if flip_tta else ()  # raises before anything is written
    evaluation = EvaluationFolder(out_dir)
    selection = select_cases(trained.run, config, cases_path, split, "label")
    selected, errors, source, root = selection.cases, selection.errors, selection.source, selection.root
    requested = len(selected) + len(errors)
    classes = list(range(1, config.data.num_classes))
    accumulator = SegmentationAccumulator(classes, policy)
    overlays: dict[str, OverlaySlices] = {}
    for case in track(selected, "evaluate", "case", logger):
        try:
            image, label = load_case(case)
            if label is None:
                errors.append(case_error(case.case_id, None, "no label map"))
                continue
            predicted = segment(trained, image, flip_tta=flip_tta, largest_component=largest_component).label
            accumulator.add(case.case_id, predicted.array[0], label.array[0], label.spacing)
            meta = {"source": "medvol evaluate", "checkpoint": trained.checkpoint}
            save(
                Volume(predicted.array, predicted.affine, meta),
                evaluation.prediction(case.case_id),
            )
            overlays[case.case_id] = overlay_slices(image, label, predicted)
        except MedvolError as error:
            errors.append(case_error(case.case_id, error.path, error.problem))
    _write_segmentation_csv(evaluation.cases, accumulator)
    save_overlays(evaluation, overlays)
    train_ids = set(trained.run.read_split().get("train") or [])
    summary: dict[str, Any] = {
        "cases_source": source,
        "cases_root": str(root),
        "n_cases": len(accumulator.cases),
        "n_requested": requested,
        "errors": errors,
        "tta": flip_tta,
        "tta_flip_axes": list(flip_axes),
        "largest_component": largest_component,
        "empty_policy": policy.to_dict(),
        "class_names": class_names(config),
        "predictions": f"{evaluation.predictions.name}/",
        "overlap_with_training": sorted(set(accumulator.cases) & train_ids) if cases_path else [],
    }
    if accumulator.cases:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="bootstrap_ci:", category=RuntimeWarning)
            metrics = accumulator.summary(confidence, n_resamples, seed)
            summary["metrics"] = {str(value): entry for value, entry in metrics["classes"].items()}
            summary["ci_method"] = metrics["ci_method"]
            summary["dice_mean_over_classes"] = _mean_dice_interval(
                accumulator, classes, n_resamples, confidence, seed
            )
    else:
        summary["metrics"] = {}
    return summary


def _write_segmentation_csv(path: Path, accumulator: SegmentationAccumulator) -> None:
    columns = ("case_id", "class", *SEGMENTATION_VALUES, "prediction_empty", "target_empty")
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for case_id in sorted(accumulator.cases):
            for value, result in accumulator.cases[case_id].items():
                row: dict[str, Any] = dict(result)
                writer.writerow(
                    [case_id, value]
                    + [repr(float(row[name])) for name in SEGMENTATION_VALUES]
                    + [int(row["prediction_empty"]), int(row["target_empty"])]
                )


def _mean_dice_interval(
    accumulator: SegmentationAccumulator,
    classes: Sequence[int],
    n_resamples: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """Per-case mean Dice over the foreground classes (NaN classes left out), its mean and CI."""
    per_case = []
    for result in accumulator.cases.values():
        values = np.array([result[c]["dice"] for c in classes], dtype=float)
        per_case.append(
            float(np.mean(values[np.isfinite(values)])) if np.isfinite(values).any() else math.nan
        )
    values = np.array(per_case)
    defined = values[np.isfinite(values)]
    if not defined.size:
        return {"mean": None, "low": None, "high": None, "n": 0, "n_undefined": int(values.size)}
    interval = bootstrap_ci(defined, np.mean, n_resamples, confidence, seed)
    return {
        "mean": interval.estimate,
        "low": interval.low,
        "high": interval.high,
        "n": int(defined.size),
        "n_undefined": int(values.size - defined.size),
    }


def class_names(config: ExperimentConfig) -> dict[str, str]:
    """Names of the foreground classes from the data's ``dataset.json``, else ``class N``."""
    names = {str(v): f"class {v}" for v in range(1, config.data.num_classes)}
    path = Path(config.data.root) / "dataset.json"
    if path.is_file():
        try:
            labels = json.loads(path.read_text()).get("labels", {})
        except (OSError, ValueError):
            return names
        for key, value in labels.items():
            number, name = (key, value) if str(key).isdigit() else (value, key)
            if str(number) in names:
                names[str(number)] = str(name)
    return names
