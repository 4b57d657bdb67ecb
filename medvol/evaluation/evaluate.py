"""``evaluate_run``: score a trained run on held-out cases, with confidence intervals.

It checks the request, loads the run, asks the run's task which cases are
scored (``split.json``'s ``val``/``test`` ids, a manifest, or a MedMNIST
split) and writes, atomically, into ``RUN_DIR/evaluation-SPLIT`` (or
``evaluation-<manifest stem>``, see ``medvol.engine.run_folder``):

- ``cases.csv``: segmentation one row per case × class; classification one row per case
  (case id, target, probabilities, predicted class). Case ids only, no patient data.
- ``summary.json``: the metrics with their CIs and everything needed to read them: split,
  checkpoint and epoch, number of cases, cases that could not be scored (``errors``), the
  bootstrap settings (resamples, seed, confidence), the empty-mask policy, medvol's version.
  Undefined values (NaN) are written as ``null``.
- ``predictions/CASE.nii.gz`` (segmentation): the predicted label map on the scan's grid.

The test split is meant to be evaluated once per configuration: evaluating it again is
allowed, counted (``test_evaluation_number``) and announced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medvol.engine.run_folder import Checkpoint, EvaluationFolder, RunFolder
from medvol.engine.tracking import MlflowRun
from medvol.errors import MedvolError
from medvol.io.atomic import json_safe, write_json
from medvol.metrics import DEFAULT_EMPTY_POLICY, EmptyPolicy

if TYPE_CHECKING:
    from medvol.engine.inference import TrainedModel

Split = Literal["val", "test"]


@dataclass
class Evaluation:
    """What :func:`evaluate_run` wrote.

    Attributes:
        out: the output folder.
        summary: the content of ``summary.json`` (NaN already written as None).
        notices: sentences the user should read (e.g. the test split was evaluated before).
    """

    out: Path
    summary: dict[str, Any]
    notices: list[str] = field(default_factory=list)


def default_out(run_dir: str | Path, split: Split = "val", cases: str | Path | None = None) -> Path:
    """``RUN_DIR/evaluation-SPLIT``, or ``RUN_DIR/evaluation-<manifest stem>`` with ``cases``."""
    return RunFolder(run_dir).evaluation(Path(cases).stem if cases is not None else split).path


def evaluate_run(
    run_dir: str | Path,
    *,
    split: Split = "val",
    cases: str | Path | None = None,
    checkpoint: Checkpoint = "best",
    out: str | Path | None = None,
    threshold: float = 0.5,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    flip_tta: bool = False,
    largest_component: bool = False,
    device: str = "auto",
    policy: EmptyPolicy = DEFAULT_EMPTY_POLICY,
) -> Evaluation:
    """Score a trained run and write ``cases.csv``, ``summary.json`` (and predictions).

    Args:
        run_dir: run folder written by ``medvol train``.
        split: ``"val"`` (the run's validation cases) or ``"test"`` (MedMNIST test split;
            runs on scan files only when ``split.json`` lists test cases).
        cases: a manifest CSV of labelled cases (column ``label`` for segmentation,
            ``class`` for a classifier trained on scan files); replaces ``split``.
        checkpoint: ``"best"`` (falls back to ``"last"`` when the run never validated) or
            ``"last"``.
        out: output folder; default :func:`default_out`.
        threshold: decision threshold on the class-1 probability (binary classification).
        n_resamples: bootstrap resamples of every CI.
        confidence: nominal coverage of every CI.
        seed: seed of the bootstrap resampling (recorded).
        flip_tta: average the segmentation over the flips of the axes the run was trained
            to flip (``augment.flip_axes``; refused for a run trained without flips).
        largest_component: score the segmentation with only the largest 26-connected
            component of each foreground class kept (as ``medvol predict --largest-component``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
        policy: values of segmentation metrics on empty masks (recorded).

    Raises:
        MedvolError: no run folder, config or checkpoint; a split the run does not have; a
            manifest without label maps (classes); a threshold outside [0, 1]; flip TTA or
            largest components asked of a classifier. A case that cannot be
            scored (unreadable, label on another grid) does not raise: it is listed in the
            summary's ``errors`` and the other cases are scored.
    """
    from medvol.engine.inference import load_trained, refuse_segmentation_options
    from medvol.evaluation.classification import evaluate_classification
    from medvol.evaluation.segmentation import evaluate_segmentation
    from medvol.tasks import MedMNISTTask

    run = RunFolder(run_dir).require()
    if not 0.0 <= threshold <= 1.0:
        raise MedvolError(None, f"--threshold must be within [0, 1], got {threshold}")
    if n_resamples < 1:
        raise MedvolError(None, f"--n-resamples must be at least 1 resample, got {n_resamples}")
    if split not in ("val", "test"):
        raise MedvolError(None, f"split must be 'val' or 'test', got {split!r}")
    cases_path = None if cases is None else Path(cases)
    trained = load_trained(run.path, checkpoint, device)
    refuse_segmentation_options(trained, {"--flip-tta": flip_tta, "--largest-component": largest_component})
    if not isinstance(trained.task, MedMNISTTask) and cases_path is None and split == "test":
        run.split_ids("test")  # raises before anything is written
    out_dir = Path(out) if out is not None else default_out(run.path, split, cases_path)
    notices: list[str] = []
    header = _header(trained, checkpoint, split if cases_path is None else "cases", n_resamples, seed)
    header["bootstrap"]["confidence"] = confidence
    if cases_path is None and split == "test":
        header["test_evaluation_number"] = _count_test_evaluations(run, out_dir, notices) + 1
    if trained.task.output == "segmentation":
        scores = evaluate_segmentation(
            trained,
            cases_path,
            split,
            out_dir,
            flip_tta,
            largest_component,
            policy,
            n_resamples,
            confidence,
            seed,
        )
    else:
        scores = evaluate_classification(
            trained, cases_path, split, out_dir, threshold, n_resamples, confidence, seed
        )
    summary = {**header, **scores}
    overlap = summary.get("overlap_with_training") or []
    if overlap:
        notices.append(
            f"{len(overlap)} evaluated case id(s) are also training cases of this run "
            f"(e.g. {', '.join(overlap[:3])}); their scores are not held-out results"
        )
    summary = json_safe(summary)
    folder = EvaluationFolder(out_dir)
    write_json(folder.summary, summary, allow_nan=False)
    MlflowRun.send_files(run.path, [folder.summary, folder.cases], out_dir.name)
    return Evaluation(out_dir, summary, notices)


def _header(trained: TrainedModel, requested: str, split: str, n_resamples: int, seed: int) -> dict[str, Any]:
    from medvol.version import __version__

    return {
        "medvol_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": trained.task.output,
        "data_task": trained.task.kind,
        "run": trained.run.name,
        "split": split,
        "checkpoint": trained.checkpoint,
        "checkpoint_requested": requested,
        "epoch": trained.epoch,
        "model": trained.config.model.name,
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "method": "percentile, case level"},
    }


def _count_test_evaluations(run: RunFolder, out_dir: Path, notices: list[str]) -> int:
    """How often the test split was evaluated before (from earlier summaries); adds a notice."""
    earlier = 0
    for folder in dict.fromkeys((run.evaluation("test").path, out_dir)):
        path = EvaluationFolder(folder).summary
        if not path.is_file():
            continue
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = {}
        number = previous.get("test_evaluation_number", 1) if isinstance(previous, dict) else 1
        earlier = max(earlier, int(number) if isinstance(number, int) else 1)
        when = previous.get("created", "earlier") if isinstance(previous, dict) else "earlier"
        notices.append(
            f"the test split of this run was already evaluated ({path}, {when}); "
            "evaluate the test split once per configuration and never choose models or settings on it"
        )
    return earlier
