"""Small experiment configs for the bundled samples: one home for the demo's, tests' and benchmarks' models.

Each function returns a plain dict in the YAML form of ``medvol.config``
(``yaml.safe_dump`` writes it as a config file; ``parse_config`` checks it).
The parameters are what the callers vary (data root, epochs, output folder,
model size); a caller with more to change edits the returned dict.

- :func:`medmnist_classifier`: a 3D ResNet on a MedMNIST ``.npz`` (28³
  AdrenalMNIST3D: 2 classes, official split), cross-entropy, Adam.
- :func:`hippocampus_segmenter`: a UNet on MSD hippocampus cases (labels 0,
  1, 2 at 1 mm), nnU-Net-style folds, Dice + cross-entropy, Adam.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# ``data.task`` of a MedMNIST .npz: the one place the builders name it.
MEDMNIST_TASK = "classification"

HIPPOCAMPUS_CLASSES = [0, 1, 2]  # background, anterior, posterior


def resnet_options(
    *, widths: int = 8, stem_stride: int = 2, num_classes: int = 2, **extra: Any
) -> dict[str, Any]:
    """``create_model("resnet…", **options)`` for one-channel 28³ volumes.

    A 3×3×3 stem without max-pool; ``stem_stride`` 2 halves the grid first
    (28 → 14, cheaper), 1 keeps it (the MedMNIST protocol). ``widths`` is the
    first stage's channels (then 2×, 4×, 8×); ``extra`` adds options such as
    ``norm``.
    """
    return {
        "in_channels": 1,
        "num_classes": num_classes,
        "stem_kernel": 3,
        "stem_stride": stem_stride,
        "stem_pool": False,
        "widths": widths,
        **extra,
    }


def unet_options(*, base_filters: int = 4, num_levels: int = 3, num_classes: int = 3) -> dict[str, Any]:
    """``create_model("unet", **options)`` for one-channel volumes (3 classes: the hippocampus labels)."""
    return {
        "in_channels": 1,
        "num_classes": num_classes,
        "base_filters": base_filters,
        "num_levels": num_levels,
    }


def tracking(output_dir: str | Path, name: str) -> dict[str, Any]:
    """The run goes to ``output_dir/name``; no TensorBoard files."""
    return {"output_dir": str(output_dir), "name": name, "tensorboard": False}


def medmnist_classifier(
    root: str | Path,
    *,
    epochs: int,
    output_dir: str | Path | None = None,
    name: str = "adrenal-resnet10",
    model: str = "resnet10",
    widths: int = 8,
    stem_stride: int = 2,
    batch_size: int = 16,
    lr: float = 0.003,
    seed: int = 0,
    **model_options: Any,
) -> dict[str, Any]:
    """A small 3D ResNet on a two-class MedMNIST file with its official split.

    Args:
        root: the MedMNIST ``.npz`` (28³ volumes).
        epochs: training epochs (validation after each).
        output_dir: folder of run folders; ``None`` leaves ``tracking`` out.
        name: the run folder's name under ``output_dir``.
        model: a ResNet of ``medvol.models`` (``resnet10``, ``resnet18`` ...).
        widths, stem_stride, model_options: see :func:`resnet_options`.
        batch_size, lr, seed: ``train.batch_size``, Adam's learning rate,
            ``train.seed``.
    """
    config: dict[str, Any] = {
        "data": {
            "task": MEDMNIST_TASK,
            "root": str(root),
            "split": {"method": "official"},
            "num_classes": 2,
        },
        "model": {
            "name": model,
            "options": resnet_options(widths=widths, stem_stride=stem_stride, **model_options),
        },
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "adam", "lr": lr},
        "train": {
            "epochs": epochs,
            "batch_size": batch_size,
            "val_every": 1,
            "metric": "auc",
            "metric_mode": "max",
            "seed": seed,
        },
    }
    if output_dir is not None:
        config["tracking"] = tracking(output_dir, name)
    return config


def hippocampus_segmenter(
    root: str | Path,
    *,
    epochs: int,
    output_dir: str | Path | None = None,
    name: str = "hippocampus-unet",
    base_filters: int = 4,
    num_levels: int = 3,
    patch_size: Sequence[int] = (32, 32, 32),
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    split: Mapping[str, Any] | None = None,
    batch_size: int = 2,
    lr: float = 0.01,
    seed: int = 0,
) -> dict[str, Any]:
    """A small UNet on MSD hippocampus cases (labels 0, 1, 2).

    Args:
        root: dataset folder (``images/`` + ``labels/``) or ``.csv`` manifest.
        epochs: training epochs (validation after each).
        output_dir: folder of run folders; ``None`` leaves ``tracking`` out.
        name: the run folder's name under ``output_dir``.
        base_filters, num_levels: see :func:`unet_options`.
        patch_size: training patch ``(X, Y, Z)`` in voxels.
        spacing_mm: the grid the cases are resampled to (RAS orientation).
        split: ``data.split``; default fold 0 of 5 nnU-Net-style folds.
        batch_size, lr, seed: ``train.batch_size``, Adam's learning rate,
            ``train.seed``.
    """
    config: dict[str, Any] = {
        "data": {
            "task": "segmentation",
            "root": str(root),
            "split": dict(split) if split is not None else {"method": "nnunet", "n_splits": 5, "fold": 0},
            "classes": list(HIPPOCAMPUS_CLASSES),
            "num_classes": len(HIPPOCAMPUS_CLASSES),
            "patch_size": list(patch_size),
        },
        "preprocess": {"orientation": "RAS", "spacing_mm": list(spacing_mm)},
        "model": {
            "name": "unet",
            "options": unet_options(base_filters=base_filters, num_levels=num_levels),
        },
        "loss": {"name": "dice_ce"},
        "optimizer": {"name": "adam", "lr": lr},
        "train": {
            "epochs": epochs,
            "batch_size": batch_size,
            "val_every": 1,
            "metric": "dice",
            "metric_mode": "max",
            "seed": seed,
        },
    }
    if output_dir is not None:
        config["tracking"] = tracking(output_dir, name)
    return config
