"""Tasks: one object per kind of data, chosen once from the config's ``data.task``.

================================  ==========================================
``data.task``                     task
================================  ==========================================
``segmentation``                  :class:`SegmentationTask` (label maps)
``classification``                :class:`ScanClassificationTask` (scan files
                                  with a ``class`` per case)
``medmnist-classification``       :class:`MedMNISTTask` (a MedMNIST 3D ``.npz``)
================================  ==========================================

Training, validation, evaluation and prediction ask the task for datasets and
model inputs; a new kind of data is a new task here, not a branch elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medvol.tasks.base import InputRecipe, ModelInput, ScoredCases, Selection, Task, TaskData
from medvol.tasks.classification import ClassificationTask, MedMNISTTask, ScanClassificationTask
from medvol.tasks.segmentation import SegmentationTask

if TYPE_CHECKING:
    from medvol.config import ExperimentConfig

TASKS: dict[str, type[Task]] = {
    task.kind: task for task in (SegmentationTask, ScanClassificationTask, MedMNISTTask)
}


def task_for(config: ExperimentConfig) -> Task:
    """The task ``config.data.task`` names."""
    return TASKS[config.data.task](config)


__all__ = [
    "TASKS",
    "ClassificationTask",
    "InputRecipe",
    "MedMNISTTask",
    "ModelInput",
    "ScanClassificationTask",
    "ScoredCases",
    "SegmentationTask",
    "Selection",
    "Task",
    "TaskData",
    "task_for",
]
