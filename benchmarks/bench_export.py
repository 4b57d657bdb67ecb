"""ONNX Runtime against torch eager for inference, in one run, on the bundled samples.

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_export.py [--quick] [--out results.json]

Two runs are trained for one epoch inside the benchmark (weights do not change
the cost of inference) and exported with ``medvol export``:

- ``unet``: the UNet ``medvol/studies/recipes/hippocampus-unet-cpu.yaml`` used until it moved
  to residual units at 32 filters (base 16 filters, 4 levels, patch 40×56×40, 1 mm), on 4
  bundled hippocampus cases;
- ``resnet``: the ResNet18 of ``medvol/studies/recipes/adrenalmnist3d-resnet18-cpu.yaml``
  (widths 16, stem stride 2, channels-last in torch as medvol resolves it on
  the CPU), on 40 bundled AdrenalMNIST3D 28³ cases.

Parts (each engine timed in the same run, interleaved, with 1 and 2 threads:
``torch.set_num_threads`` for torch and for the torch steps around ONNX
Runtime, ``intra_op_num_threads`` for ONNX Runtime):

1. ``per_scan``: the whole per-scan path on volumes already in memory:
   ``segment`` (prepare, sliding windows, back to the scan's grid, argmax) on
   the bundled hippocampus volumes; ``classify_scan`` on AdrenalMNIST3D test
   volumes. ``network_only`` is one forward pass of what the path feeds the
   network (4 windows; one 28³ volume).
2. ``folder``: ``medvol predict`` over a folder of NIfTI files with each engine
   (torch on the run folder, ONNX Runtime on the package) against the
   sequential torch loop a user would write (``load_trained``, then
   ``medvol.load`` → ``segment``/``classify_scan`` → save, one after the
   other), with the machine's default threads. Model loading is inside every
   timing.

The JSON report goes to stdout (and ``--out``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import yaml
from bench_io import time_calls
from common import environment, finish_report, make_log, stdout_to_stderr

import medvol
from medvol import demo
from medvol.cli import main as medvol_main
from medvol.engine.inference import TrainedModel, classify_scan, load_trained, prepare_input, segment
from medvol.export import export_run, load_package
from medvol.prediction import Options, predict

log = make_log("bench_export")
UNET = {"in_channels": 1, "num_classes": 3, "base_filters": 16, "num_levels": 4}
PATCH = (40, 56, 40)
RESNET = {"in_channels": 1, "num_classes": 2, "stem_kernel": 3, "stem_stride": 2, "stem_pool": False}
RESNET_WIDTHS = 16


@dataclass(frozen=True)
class Sizes:
    """How much: the full run or the ``--quick`` smoke test."""

    volumes: int  # hippocampus volumes per timing (at most the 16 bundled)
    classifier_volumes: int
    repeats: int


FULL = Sizes(volumes=16, classifier_volumes=64, repeats=3)
QUICK = Sizes(volumes=3, classifier_volumes=8, repeats=1)


def summarize(times: dict[str, list[float]], baseline: str, items: int) -> dict[str, Any]:
    """Median seconds per call and per item, and speed-up over the baseline."""
    base = statistics.median(times[baseline])
    return {
        name: {
            "median_s": round(statistics.median(runs), 4),
            "per_item_ms": round(1000 * statistics.median(runs) / items, 3),
            "speedup_over_baseline": round(base / statistics.median(runs), 3),
            "runs_s": [round(t, 4) for t in runs],
        }
        for name, runs in times.items()
    }


# ----------------------------------------------------------------------- the runs


def train_unet(root: Path) -> Path:
    samples = demo.sample("hippocampus/train")
    for case in ("001", "004", "006", "007"):
        for kind in ("images", "labels"):
            (root / "hippocampus" / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(samples / kind / f"hippocampus_{case}.nii.gz", root / "hippocampus" / kind)
    config = {
        "data": {
            "task": "segmentation",
            "root": str(root / "hippocampus"),
            "num_classes": 3,
            "patch_size": list(PATCH),
            "split": {"n_splits": 2},
        },
        "preprocess": {"orientation": "RAS", "spacing_mm": [1.0, 1.0, 1.0]},
        "model": {"name": "unet", "options": UNET},
        "loss": {"name": "dice_ce"},
        "train": {"epochs": 1, "batch_size": 2, "metric": "dice", "metric_mode": "max"},
        "tracking": {"output_dir": str(root / "runs"), "name": "unet", "tensorboard": False},
    }
    return train(root, "unet", config)


def train_resnet(root: Path) -> Path:
    arrays = np.load(demo.sample("adrenalmnist3d.npz"))
    subset = {}
    for split, count in {"train": 24, "val": 16, "test": 4}.items():
        subset[f"{split}_images"] = arrays[f"{split}_images"][:count]
        subset[f"{split}_labels"] = arrays[f"{split}_labels"][:count]
    np.savez(root / "adrenal.npz", **subset)
    config = demo.medmnist_classifier(
        root / "adrenal.npz", epochs=1, output_dir=root / "runs", name="resnet", model="resnet18"
    )
    config["model"]["options"] = {**RESNET, "widths": RESNET_WIDTHS}
    config["tracking"]["tensorboard"] = False
    return train(root, "resnet", config)


def train(root: Path, name: str, config: dict[str, Any]) -> Path:
    log(f"{name}: training the benchmark model (1 epoch)")
    (root / f"{name}.yaml").write_text(yaml.safe_dump(config))
    if medvol_main(["train", str(root / f"{name}.yaml")]) != 0:
        raise RuntimeError(f"training the benchmark {name} failed")
    return root / "runs" / name


def hippocampus_files(count: int) -> list[Path]:
    folders = [demo.sample("hippocampus/holdout/images"), demo.sample("hippocampus/train/images")]
    return sorted(p for folder in folders for p in folder.glob("*.nii.gz"))[:count]


def adrenal_files(folder: Path, count: int) -> list[Path]:
    images = np.load(demo.sample("adrenalmnist3d.npz"))["test_images"][:count]
    folder.mkdir(parents=True)
    for index, image in enumerate(images):
        nib.save(nib.Nifti1Image(image, np.eye(4)), folder / f"adrenal_{index:03d}.nii.gz")
    return sorted(folder.iterdir())


# ------------------------------------------------------------------- per scan


def scan_loop(trained: TrainedModel, volumes: list[Any]) -> Callable[[], None]:
    """A call that predicts every volume: ``segment`` or ``classify_scan`` by the model's task."""
    segmenter = trained.task.output == "segmentation"

    def run() -> None:
        for volume in volumes:
            segment(trained, volume) if segmenter else classify_scan(trained, volume)

    return run


def forward_loop(trained: TrainedModel, batch: Any, calls: int = 10) -> Callable[[], None]:
    """A call that runs the network alone ``calls`` times on ``batch``."""

    def run() -> None:
        for _ in range(calls):
            trained.network(batch)

    return run


def threaded(threads: int, call: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return call()
        finally:
            torch.set_num_threads(previous)

    return run


def per_scan(
    run_dir: Path, package: Path, volumes: list[medvol.Volume], repeats: int, threads: int
) -> dict[str, Any]:
    """``segment`` or ``classify_scan`` per scan and one forward pass, torch against ONNX Runtime."""
    engines = {"torch_eager": load_trained(run_dir), "onnxruntime": load_package(package, threads=threads)}
    first = engines["torch_eager"]
    segmenter = first.task.output == "segmentation"
    if segmenter:
        batch = torch.from_numpy(np.stack([window(prepare_input(first, volumes[0]).array)] * 4))
    else:
        batch = prepare_input(first, volumes[0]).array[None]

    calls = {name: threaded(threads, scan_loop(trained, volumes)) for name, trained in engines.items()}
    forward = {name: threaded(threads, forward_loop(trained, batch)) for name, trained in engines.items()}
    result = summarize(time_calls(calls, repeats), "torch_eager", len(volumes))
    network_only = summarize(time_calls(forward, repeats), "torch_eager", 10)
    logits = [trained.network(batch) for trained in engines.values()]
    return {
        "threads": threads,
        "per_scan": result,
        "network_only": {"input": list(batch.shape), **network_only},
        "max_abs_logit_difference": float(np.abs(logits[0] - logits[1]).max()),
    }


def window(image: np.ndarray) -> np.ndarray:
    """A patch-sized window of a prepared image ``(C, X, Y, Z)``, padded with its minimum."""
    pad = [(0, 0)] + [(0, max(0, p - n)) for p, n in zip(PATCH, image.shape[1:], strict=True)]
    padded = np.pad(image, pad, constant_values=float(image.min()))
    return padded[:, : PATCH[0], : PATCH[1], : PATCH[2]]


# -------------------------------------------------------------------- folders


def sequential_loop(run_dir: Path, files: list[Path], out: Path) -> None:
    """The baseline: load the run, then load → predict → save each file in turn."""
    trained = load_trained(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in files:
        volume = medvol.load(path)
        if trained.task.output == "segmentation":
            medvol.save(segment(trained, volume).label, out / path.name.replace(".nii.gz", ".seg.nii.gz"))
        else:
            rows.append([path.name, *classify_scan(trained, volume).tolist()])
    if rows:
        with open(out / "predictions.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(rows)


def folder(run_dir: Path, package: Path, files: list[Path], root: Path, repeats: int) -> dict[str, Any]:
    options = Options(overwrite=True, progress=False)
    scans = files[0].parent
    calls = {
        "sequential_torch_loop": lambda: sequential_loop(run_dir, files, root / "loop"),
        "medvol_predict_torch": lambda: predict(run_dir, scans, root / "torch", options),
        "medvol_predict_onnxruntime": lambda: predict(package, scans, root / "onnx", options),
    }
    result = summarize(time_calls(calls, repeats), "sequential_torch_loop", len(files))
    labels = sorted((root / "torch").rglob("*.seg.nii.gz"))
    if labels:
        check = {"voxels_differing": sum(int(np.sum(differ(root, label))) for label in labels)}
    else:
        tables = [(root / name / "predictions.csv").read_text() for name in ("torch", "onnx")]
        check = {"predictions_csv_identical": tables[0] == tables[1]}
    return {"scans": len(files), "torch_threads": torch.get_num_threads(), "results": result, "check": check}


def differ(root: Path, label: Path) -> np.ndarray:
    """Voxels where ONNX Runtime's label map differs from torch's."""
    other = root / "onnx" / label.relative_to(root / "torch")
    return np.asarray(medvol.load(label).array != medvol.load(other).array)


# ----------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few volumes, one repeat")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    machine = environment()
    load_before = os.getloadavg()
    cases: dict[str, Any] = {}
    with stdout_to_stderr(), tempfile.TemporaryDirectory(prefix="medvol-bench-export-") as tmp:
        root = Path(tmp)
        runs = {"unet": train_unet(root), "resnet": train_resnet(root)}
        files = {
            "unet": hippocampus_files(sizes.volumes),
            "resnet": adrenal_files(root / "adrenal", sizes.classifier_volumes),
        }
        for name, run_dir in runs.items():
            start = time.perf_counter()
            package = export_run(run_dir, root / "packages" / name)
            export_s = round(time.perf_counter() - start, 2)
            volumes = [medvol.load(path) for path in files[name]]
            log(f"{name}: per scan, {len(volumes)} volumes, 1 and 2 threads")
            scan = [per_scan(run_dir, package, volumes, sizes.repeats, t) for t in (1, 2)]
            log(f"{name}: medvol predict over a folder of {len(files[name])}")
            whole = folder(run_dir, package, files[name], root / f"out-{name}", sizes.repeats)
            cases[name] = {"export_s": export_s, "per_scan": scan, "folder": whole}
    finish_report(
        {
            "quick": args.quick,
            "sizes": asdict(sizes),
            "timing": "wall-clock median of repeats after one untimed warm-up; calls interleaved",
            "environment": machine,
            "onnxruntime": __import__("onnxruntime").__version__,
            "load_average_1_5_15_min": {
                "before": [round(v, 2) for v in load_before],
                "after": [round(v, 2) for v in os.getloadavg()],
                "note": "the machine is shared; a load above the core count means other processes competed",
            },
            "cases": cases,
        },
        started,
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
