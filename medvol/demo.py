"""``medvol demo``: the main job end to end on data shipped inside medvol.

Every step is a ``medvol`` command, printed before it runs so that it can be
repeated by hand; the configs are written into the output folder.

1. Load the bundled CT DICOM series, print its geometry, convert it to NIfTI.
2. Index the bundled hippocampus MRI cases (12 for training, 4 held out).
3. Train a small UNet on the 12 training cases (4-fold nnU-Net-style split,
   fold 0 for validation).
4. Predict over the held-out folder: masks in each scan's own grid.
5. Evaluate the segmenter on the held-out cases (Dice, HD95 with CIs).
6. Train a small 3D ResNet on AdrenalMNIST3D (official split), evaluate it
   once on the test split.
7. Write an HTML report with a model card for each run.

About four minutes on two CPU cores; ``--quick`` trains for one epoch each
(a smoke test of the pipeline, not a useful model).

This module is also the one home of the small configs for the bundled
samples (:func:`medmnist_classifier`, :func:`hippocampus_segmenter`,
:func:`resnet_options`, :func:`unet_options`), which the tests and benchmarks
build their tiny models from; ``MEDMNIST_TASK`` names the ``data.task`` of a
MedMNIST file once.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medvol.errors import MedvolError
from medvol.io import load, save
from medvol.io.describe import describe, format_summary

TOTAL_STEPS = 10


def sample(name: str) -> Path:
    """Path of a bundled sample (see ``medvol/samples/README.md``)."""
    return Path(str(resources.files("medvol.samples") / name))


def sample_ct_series() -> Path:
    """Folder of the bundled 20-slice CT series (JPEG 2000)."""
    return sample("ct_jpeg2000")


# Small experiment configs for the bundled samples: the one home of the demo's, the tests' and the
# benchmarks' tiny models. Each returns a plain dict in the YAML form of ``medvol.config``; the
# parameters are what callers vary, and a caller with more to change edits the returned dict.

# ``data.task`` of a MedMNIST .npz: the one place the builders name it.
MEDMNIST_TASK = "medmnist-classification"

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


def _tracking(output_dir: str | Path, name: str) -> dict[str, Any]:
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
        config["tracking"] = _tracking(output_dir, name)
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
        config["tracking"] = _tracking(output_dir, name)
    return config


def segmenter_config(out: Path, quick: bool) -> dict[str, Any]:
    """A UNet sized for a CPU on the 12 bundled hippocampus training cases."""
    config = hippocampus_segmenter(
        sample("hippocampus/train"),
        epochs=1 if quick else 60,
        output_dir=out / "runs",
        name="hippocampus-unet",
        base_filters=8,
        patch_size=(32, 48, 32),
        split={"method": "nnunet", "n_splits": 4, "fold": 0},
        batch_size=4,
    )
    config["normalize"] = {"type": "ZScore", "params": {"per_scan": True}}
    config["augment"] = {"affine_prob": 0.2, "rotate_deg": 10.0, "noise_prob": 0.1}
    config["optimizer"] = {"name": "adamw", "lr": 0.01, "weight_decay": 1e-4}
    config["schedule"] = {"name": "poly"}
    config["train"]["val_every"] = 1 if quick else 10
    return config


def classifier_config(out: Path, quick: bool) -> dict[str, Any]:
    """A small 3D ResNet-10 on the bundled AdrenalMNIST3D 28³ file."""
    config = medmnist_classifier(
        sample("adrenalmnist3d.npz"),
        epochs=1 if quick else 12,
        output_dir=out / "runs",
        name="adrenal-resnet10",
        batch_size=32,
        lr=0.001,
    )
    config["augment"] = {"affine_prob": 0.3, "rotate_deg": 10.0}
    config["schedule"] = {"name": "cosine"}
    return config


def run(out: Path, main: Callable[[Sequence[str]], int], quick: bool = False) -> int:
    """Run the demo, writing into ``out``; returns an exit code.

    Args:
        out: output folder (configs, runs, predictions, reports).
        main: the ``medvol`` command line (``medvol.cli.main``), which runs
            each step as the printed command would.
        quick: one epoch per model (a smoke test, not a useful model).
    """
    out.mkdir(parents=True, exist_ok=True)
    if (out / "runs").exists():
        print(f"removing the previous demo runs in {out / 'runs'}")
        shutil.rmtree(out / "runs")
    _convert_ct(out)
    hippocampus = sample("hippocampus")
    segmenter = _write_config(out / "configs" / "hippocampus-unet.yaml", segmenter_config(out, quick))
    classifier = _write_config(out / "configs" / "adrenal-resnet10.yaml", classifier_config(out, quick))
    seg_run = out / "runs" / "hippocampus-unet"
    cls_run = out / "runs" / "adrenal-resnet10"
    holdout_manifest = out / "hippocampus-holdout.csv"
    steps = [
        (
            "index the hippocampus training cases",
            ["index", hippocampus / "train", "--out", out / "hippocampus-train.csv"],
        ),
        ("index the held-out cases", ["index", hippocampus / "holdout", "--out", holdout_manifest]),
        ("train a UNet on 12 hippocampus cases", ["train", segmenter]),
        (
            "predict over the held-out folder",
            ["predict", seg_run, hippocampus / "holdout" / "images", out / "predictions", "--overwrite"],
        ),
        ("evaluate on the held-out cases", ["evaluate", seg_run, "--cases", holdout_manifest]),
        ("train a 3D ResNet on AdrenalMNIST3D", ["train", classifier]),
        ("evaluate it once on the test split", ["evaluate", cls_run, "--split", "test"]),
        ("report on the segmenter", ["report", seg_run]),
        ("report on the classifier", ["report", cls_run]),
    ]
    for number, (title, arguments) in enumerate(steps, 2):
        command = [str(argument) for argument in arguments]
        print(f"\n[{number}/{TOTAL_STEPS}] {title}\n$ medvol {' '.join(command)}", flush=True)
        code = main(command)
        if code != 0:
            print(f"medvol demo: step {number} failed (exit {code})")
            return code
    print(f"\nreports: {seg_run / 'report' / 'report.html'}\n         {cls_run / 'report' / 'report.html'}")
    return 0


def _convert_ct(out: Path) -> None:
    """Step 1: DICOM → NIfTI with the geometry checked on the way back."""
    source = sample_ct_series()
    target = out / "sample_ct.nii.gz"
    print(
        f"[1/{TOTAL_STEPS}] convert the bundled CT DICOM series to NIfTI\n$ medvol convert {source} {target}"
    )
    volume = load(source)
    print(format_summary(describe(volume)))
    save(volume, target)
    reloaded = load(target)
    if not (
        np.allclose(reloaded.affine, volume.affine, atol=1e-4)
        and np.array_equal(reloaded.array, volume.array)
    ):
        raise MedvolError(target, "the converted file does not reload with the same geometry and voxels")
    print(f"wrote {target}: reloads with the same geometry and voxels")


def _write_config(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
