"""The validation epoch of training: every validation case scored exactly once across ranks.

Rank ``r`` of ``n`` takes cases ``r, r + n, ...``; per-case results are
gathered to every rank and reduced there, so no case is dropped or counted
twice (a ``DistributedSampler`` would pad with duplicates).

Classification reports ``loss``, ``auc`` (class-1 probability for binary,
macro one-vs-rest otherwise) and ``acc``; segmentation reports the mean Dice
over cases of each foreground class (``dice_1``, ``dice_2``...) and their mean
``dice``, from sliding-window inference on the whole preprocessed volume.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from medvol.config import ExperimentConfig
from medvol.engine import distributed
from medvol.engine.distributed import Runtime
from medvol.engine.torch_network import TorchNetwork
from medvol.engine.windows import predict_volume
from medvol.metrics import accuracy, dice_per_class, multiclass_auc

if TYPE_CHECKING:
    from medvol.tasks import Task, TaskData


@torch.no_grad()
def validation_epoch(
    model: nn.Module,
    task: Task,
    data: TaskData,
    runtime: Runtime,
    autocast: AbstractContextManager[Any],
    loss_fn: nn.Module,
) -> dict[str, float]:
    """Score the validation split; the same numbers on every rank."""
    config = task.config
    indices = list(range(runtime.rank, len(data.val), runtime.world_size))
    if task.output == "classification":
        size = config.train.batch_size
        rows: list[dict[str, Any]] = []
        for start in range(0, len(indices), size):
            samples = [data.val[i] for i in indices[start : start + size]]
            rows.extend(_classify(model, samples, runtime, autocast, loss_fn))
        return _classification_summary(distributed.gather_objects(runtime, rows))
    rows = [_segment(model, data.val[i], config, runtime, autocast) for i in indices]
    return _segmentation_summary(distributed.gather_objects(runtime, rows), config.data.num_classes)


def _classify(
    model: nn.Module,
    samples: list[dict[str, Any]],
    runtime: Runtime,
    autocast: AbstractContextManager[Any],
    loss_fn: nn.Module,
) -> list[dict[str, Any]]:
    """Per-case target, class probabilities and loss for a batch of samples."""
    images = torch.stack([sample["image"] for sample in samples]).to(runtime.device)
    targets = torch.stack([sample["label"].reshape(()) for sample in samples]).to(runtime.device)
    with autocast:
        logits = model(images).float()
    probabilities = torch.softmax(logits, dim=1).cpu().numpy()
    return [
        {
            "case_id": sample["case_id"],
            "target": int(targets[i]),
            "probabilities": probabilities[i],
            "loss": float(loss_fn(logits[i : i + 1], targets[i : i + 1])),
        }
        for i, sample in enumerate(samples)
    ]


def _classification_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    rows = list({row["case_id"]: row for row in rows}.values())
    targets = np.array([row["target"] for row in rows])
    probabilities = np.stack([row["probabilities"] for row in rows])
    return {
        "loss": float(np.mean([row["loss"] for row in rows])),
        "auc": multiclass_auc(targets, probabilities),
        "acc": accuracy(targets, probabilities),
        "cases": len(rows),
    }


def _segment(
    model: nn.Module,
    sample: dict[str, Any],
    config: ExperimentConfig,
    runtime: Runtime,
    autocast: AbstractContextManager[Any],
) -> dict[str, Any]:
    image = sample["image"].unsqueeze(0).numpy()
    x, y, z = config.data.patch_size or image.shape[2:]
    network = TorchNetwork(model, runtime.device, autocast)
    prediction = predict_volume(network, image, (int(x), int(y), int(z))).argmax(axis=1)[0]
    classes = range(1, config.data.num_classes)
    return {
        "case_id": sample["case_id"],
        "dice": dice_per_class(prediction, sample["label"][0].numpy(), classes),
    }


def _segmentation_summary(rows: list[dict[str, Any]], num_classes: int) -> dict[str, float]:
    rows = list({row["case_id"]: row for row in rows}.values())
    summary: dict[str, float] = {}
    for value in range(1, num_classes):
        summary[f"dice_{value}"] = float(np.nanmean([row["dice"][value] for row in rows]))
    summary["dice"] = float(np.mean([summary[f"dice_{v}"] for v in range(1, num_classes)]))
    summary["cases"] = len(rows)
    return summary
