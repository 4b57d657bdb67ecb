"""What a report reads: a run folder's own files, through :class:`RunFolder`, and nothing else.

Reading is lenient where a report can still say something useful: an optional file
that is missing is ``None`` (or empty), one that cannot be read becomes a note in
:attr:`RunFiles.unreadable`, listed at the top of the report. Only a missing run
folder or an unreadable ``config.yaml`` stops the report.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvol.engine.run_folder import Checkpoint, EvaluationFolder, RunFolder
from medvol.errors import MedvolError

if TYPE_CHECKING:
    from medvol.config import ExperimentConfig
    from medvol.tasks import Task

CaseRows = dict[str, dict[str, dict[str, float]]]
"""``{case_id: {class: {metric: value}}}`` of a segmentation ``cases.csv`` (NaN where empty)."""


@dataclass
class RunFiles:
    """What a run folder holds, read for the report.

    Attributes:
        folder: the run folder.
        config: ``config.yaml``, typed.
        split, fingerprint, normalizer, environment: those JSON files, ``None`` when
            missing or unreadable.
        history: one record per epoch from ``metrics.jsonl`` (empty when missing).
        evaluations: each readable evaluation folder with its ``summary.json``, by name.
        unreadable: one line per file that could not be read (path and problem).
    """

    folder: RunFolder
    config: ExperimentConfig
    split: dict[str, Any] | None
    fingerprint: dict[str, Any] | None
    normalizer: dict[str, Any] | None
    environment: dict[str, Any] | None
    history: list[dict[str, Any]]
    evaluations: list[tuple[EvaluationFolder, dict[str, Any]]]
    unreadable: list[str]

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def task(self) -> Task:
        """The run's task (``medvol.tasks``): it describes the run's data for the model card."""
        from medvol.tasks import task_for

        return task_for(self.config)

    @property
    def name(self) -> str:
        return self.folder.name


def read_run(run_dir: str | Path) -> RunFiles:
    """Read a run folder's files for the report.

    Raises:
        MedvolError: the folder or its ``config.yaml`` is missing, or the config is invalid.
    """
    from medvol.engine.tracking import read_metrics

    folder = RunFolder(run_dir).require()
    config = folder.read_config()
    unreadable: list[str] = []
    try:
        history = read_metrics(folder.path)  # skips (and warns about) lines that are not epochs
    except OSError as error:
        history = []
        unreadable.append(f"{folder.metrics}: {error}")
    evaluations = []
    for evaluation in folder.evaluations():
        try:
            evaluations.append((evaluation, evaluation.read_summary()))
        except MedvolError as error:
            unreadable.append(str(error))
    return RunFiles(
        folder=folder,
        config=config,
        split=_optional_json(folder, folder.split, unreadable),
        fingerprint=_optional_json(folder, folder.fingerprint, unreadable),
        normalizer=_optional_json(folder, folder.normalizer, unreadable),
        environment=_optional_json(folder, folder.environment, unreadable),
        history=history,
        evaluations=evaluations,
        unreadable=unreadable,
    )


def _optional_json(folder: RunFolder, path: Path, unreadable: list[str]) -> dict[str, Any] | None:
    """A JSON object file of the run; ``None`` when missing, or noted in ``unreadable`` when bad."""
    if not path.is_file():
        return None
    try:
        return folder.read_json(path)
    except MedvolError as error:
        unreadable.append(str(error))
        return None


def parameter_count(folder: RunFolder) -> str:
    """The model's number of parameters as text, from the best (else last) checkpoint."""
    from medvol.engine.checkpoint import load_checkpoint

    order: tuple[Checkpoint, ...] = ("best", "last")
    for which in order:
        path = folder.checkpoint(which)
        if path.is_file():
            try:
                state = load_checkpoint(path)
            except MedvolError as error:
                return f"unknown ({error.problem})"
            total = sum(int(t.numel()) for t in state.get("model", {}).values() if hasattr(t, "numel"))
            return f"{total:,}"
    return "unknown (no checkpoint)"


def read_segmentation_cases(evaluation: EvaluationFolder) -> CaseRows:
    """A segmentation evaluation's ``cases.csv`` by case and class; empty when missing."""
    if not evaluation.cases.is_file():
        return {}
    result: CaseRows = {}
    with open(evaluation.cases, newline="") as handle:
        for row in csv.DictReader(handle):
            values = {k: _float(v) for k, v in row.items() if k not in ("case_id", "class")}
            result.setdefault(row["case_id"], {})[row["class"]] = values
    return result


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan
