"""Batch inference benchmark: ``medvol predict`` against a sequential loop, in one run.

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_predict.py [--quick] [--out results.json]

Parts (every part times its baseline in the same run, interleaved):

1. ``batch_predict``: segmenting a folder of MSD hippocampus MRI volumes
   (``--cases``, default 40, none of them used in training) with
   ``medvol.prediction.predict`` (threads load the next scans and write finished
   label maps while the model runs) against the loop a user would write:
   ``load_trained`` once, then for each file ``medvol.load`` → ``segment`` →
   ``medvol.save``, one after the other. Same run folder, same checkpoint,
   same outputs (checked voxel for voxel). Two models, each trained for one
   epoch on 4 cases by ``medvol train`` inside the benchmark (weights do not
   change the cost of inference): ``config_unet``, the UNet
   ``medvol/studies/recipes/hippocampus-unet-cpu.yaml`` used until it moved to residual units
   at 32 filters (base 16 filters, 4 levels, patch
   40×56×40), and ``small_unet`` (base 4, 3 levels, patch 32³), where loading
   and saving are a larger share of the work. ``medvol predict`` runs with
   its defaults: 2 I/O threads, torch on its own thread setting. Both are
   also timed with torch on one core fewer (``Options(torch_threads=...)``
   and the loop under ``torch.set_num_threads``), the remedy on a machine
   shared with other jobs. ``segment_only_no_io`` segments the same volumes already in memory
   and writes nothing: the ceiling for hiding I/O behind the model. Model
   loading is inside every timing; one untimed warm-up call of each on 2
   volumes comes first.
2. ``sliding_window``: ``medvol.engine.windows.predict_volume`` (what
   ``segment`` calls: numpy windows, weights and blending around the network,
   here torch through ``TorchNetwork``) against MONAI's
   ``sliding_window_inference`` (all torch) on a random 256³ volume
   (``--quick``: 96³) with the same UNet (fp32, eval) and the same patch, half
   overlap, Gaussian blending, 4 windows per batch; MONAI's logits go through
   the same softmax. Reports the maximum absolute difference of the
   probabilities.

The JSON report goes to stdout (and ``--out``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from bench_io import DEFAULT_DATA, time_calls
from common import environment, finish_report, make_log, stdout_to_stderr

import medvol
from medvol import demo
from medvol.cli import main as medvol_main
from medvol.engine.inference import load_trained, segment
from medvol.engine.torch_network import TorchNetwork
from medvol.engine.windows import SLIDING_WINDOW_OVERLAP, predict_volume
from medvol.models import create_model
from medvol.prediction import Options, predict

HIPPOCAMPUS = Path("msd-hippocampus")
TRAIN_CASES = ("hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006")
UNET = demo.unet_options(base_filters=16, num_levels=4)
PATCH = (40, 56, 40)
MODELS = {
    "config_unet": (UNET, PATCH),
    "small_unet": (demo.unet_options(), (32, 32, 32)),
}


@dataclass(frozen=True)
class Sizes:
    """How big and how often: the full run or the ``--quick`` smoke test."""

    cases: int
    repeats: int
    volume: int  # edge of the sliding-window volume, voxels
    window_repeats: int


FULL = Sizes(cases=40, repeats=5, volume=256, window_repeats=3)
QUICK = Sizes(cases=6, repeats=1, volume=96, window_repeats=1)


log = make_log("bench_predict")


def summarize(times: dict[str, list[float]], baseline: str, items: int | None = None) -> dict[str, Any]:
    """Median seconds, ratio to the baseline's median and speed-up over it."""
    base = statistics.median(times[baseline])
    out: dict[str, Any] = {}
    for name, runs in times.items():
        median = statistics.median(runs)
        out[name] = {
            "median_s": round(median, 3),
            "ratio_to_baseline": round(median / base, 3),
            "speedup_over_baseline": round(base / median, 3),
            "runs_s": [round(t, 3) for t in runs],
        }
        if items:
            out[name]["scans_per_s"] = round(items / median, 3)
    return out


# ------------------------------------------------------------------- batch predict


def train_run(data: Path, root: Path, model: str = "config_unet") -> Path:
    """A run folder with a hippocampus UNet, one epoch on 4 cases (weights do not matter here)."""
    options, patch = MODELS[model]
    for case in TRAIN_CASES:
        for kind in ("images", "labels"):
            (root / "train" / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(data / HIPPOCAMPUS / kind / f"{case}.nii.gz", root / "train" / kind)
    config = {
        "data": {
            "task": "segmentation",
            "root": str(root / "train"),
            "num_classes": 3,
            "patch_size": list(patch),
            "split": {"n_splits": 2},
        },
        "preprocess": {"orientation": "RAS", "spacing_mm": [1.0, 1.0, 1.0]},
        "model": {"name": "unet", "options": options},
        "loss": {"name": "dice_ce"},
        "train": {"epochs": 1, "batch_size": 2, "metric": "dice", "metric_mode": "max"},
        "tracking": {"output_dir": str(root / "runs"), "name": model, "tensorboard": False},
    }
    (root / f"{model}.yaml").write_text(yaml.safe_dump(config))
    if medvol_main(["train", str(root / f"{model}.yaml")]) != 0:
        raise RuntimeError("training the benchmark model failed")
    return root / "runs" / model


def with_threads(threads: int, call: Callable[[], object]) -> Callable[[], object]:
    """``call`` with torch limited to ``threads`` CPU threads (restored afterwards)."""

    def run() -> object:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return call()
        finally:
            torch.set_num_threads(previous)

    return run


def segment_only(run_dir: Path, volumes: list[medvol.Volume]) -> None:
    """The model's share alone: ``load_trained`` and ``segment`` on volumes already in memory.

    No pipeline that still segments in one thread can be faster than this;
    it is the ceiling for hiding loading and saving behind the model.
    """
    trained = load_trained(run_dir)
    for volume in volumes:
        segment(trained, volume)


def naive_loop(run_dir: Path, files: list[Path], out: Path) -> None:
    """The baseline: load the run, then load → segment → save each file in turn."""
    trained = load_trained(run_dir)
    for path in files:
        result = segment(trained, medvol.load(path))
        medvol.save(result.label, out / path.name.replace(".nii.gz", ".seg.nii.gz"))


def batch_case(data: Path, root: Path, sizes: Sizes, model: str) -> dict[str, Any]:
    images = sorted((data / HIPPOCAMPUS / "images").glob("hippocampus_*.nii.gz"))
    chosen = [p for p in images if p.name.removesuffix(".nii.gz") not in TRAIN_CASES][: sizes.cases]
    in_dir, warm_dir = root / "scans", root / "warm-up"
    for folder, paths in ((in_dir, chosen), (warm_dir, chosen[:2])):
        folder.mkdir()
        for path in paths:
            shutil.copy(path, folder)
    files, warm_files = sorted(in_dir.iterdir()), sorted(warm_dir.iterdir())
    log(f"{model}: training the benchmark model (1 epoch, 4 cases)")
    run_dir = train_run(data, root / "run", model)

    def calls(scans: Path, paths: list[Path], out: Path) -> dict[str, Callable[[], object]]:
        cores = torch.get_num_threads()
        volumes = [medvol.load(path) for path in paths]
        default = Options(overwrite=True, progress=False)
        fewer = Options(overwrite=True, progress=False, torch_threads=max(1, cores - 1))
        return {
            "sequential_loop": lambda: naive_loop(run_dir, paths, out / "loop"),
            "medvol_predict": lambda: predict(run_dir, scans, out / "predict", default),
            "medvol_predict_one_core_fewer": lambda: predict(run_dir, scans, out / "predict-1", fewer),
            "sequential_loop_one_core_fewer": with_threads(
                max(1, cores - 1), lambda: naive_loop(run_dir, paths, out / "loop-1")
            ),
            "segment_only_no_io": lambda: segment_only(run_dir, volumes),
        }

    time_calls(calls(warm_dir, warm_files, root / "warm-out"), 1, warm_up=False)
    log(f"{model}: {len(files)} volumes, {sizes.repeats} repeats")
    times = time_calls(calls(in_dir, files, root / "out"), sizes.repeats, warm_up=False)
    same = all(
        np.array_equal(
            medvol.load(root / "out/loop" / f.name.replace(".nii.gz", ".seg.nii.gz")).array,
            medvol.load(root / "out/predict" / f.name.replace(".nii.gz", ".seg.nii.gz")).array,
        )
        for f in files
    )
    shapes = [list(medvol.load(path).shape) for path in files]
    options, patch = MODELS[model]
    trained = load_trained(run_dir)
    return {
        "description": f"{len(files)} MSD hippocampus MRI volumes (NIfTI, gzip), label maps written as NIfTI",
        "volume_shapes": {"min": np.min(shapes, axis=0).tolist(), "max": np.max(shapes, axis=0).tolist()},
        "model": {"name": "unet", **options, "patch": list(patch)},
        "precision": repr(getattr(trained, "precision", trained.config.train.amp)),
        "torch_threads": torch.get_num_threads(),
        "baseline": "sequential_loop",
        "results": summarize(times, "sequential_loop", len(files)),
        "check": {"label_maps_identical": same},
        "stage_share_in_sequential_loop": stage_times(run_dir, files[: min(10, len(files))]),
    }


def stage_times(run_dir: Path, files: list[Path]) -> dict[str, float]:
    """Where the sequential loop spends its time: load, segment, save (fractions)."""
    trained = load_trained(run_dir)
    spent = {"load": 0.0, "segment": 0.0, "save": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            start = time.perf_counter()
            volume = medvol.load(path)
            loaded = time.perf_counter()
            result = segment(trained, volume)
            segmented = time.perf_counter()
            medvol.save(result.label, Path(tmp) / path.name)
            spent["load"] += loaded - start
            spent["segment"] += segmented - loaded
            spent["save"] += time.perf_counter() - segmented
    total = sum(spent.values())
    return {name: round(value / total, 3) for name, value in spent.items()}


# ------------------------------------------------------------------ sliding window


def window_case(sizes: Sizes) -> dict[str, Any]:
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    model = create_model("unet", **UNET).eval()
    image = torch.randn(1, 1, sizes.volume, sizes.volume, sizes.volume)
    outputs: dict[str, torch.Tensor] = {}

    network = TorchNetwork(model, torch.device("cpu"), nullcontext())

    def medvol_windows(volume: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(predict_volume(network, volume.numpy(), PATCH))

    @torch.no_grad()
    def monai_windows(volume: torch.Tensor) -> torch.Tensor:
        logits = sliding_window_inference(
            volume,
            roi_size=PATCH,
            sw_batch_size=4,
            predictor=model,
            overlap=SLIDING_WINDOW_OVERLAP,
            mode="gaussian",
        )
        assert isinstance(logits, torch.Tensor)
        return torch.softmax(logits.float(), dim=1)

    def keep(name: str, call: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
        def run() -> None:
            outputs[name] = call(image)

        return run

    log(f"sliding window: {sizes.volume}³, {sizes.window_repeats} repeat(s) after a warm-up on 64³")
    small = image[..., :64, :64, :64]  # warm-up on a small volume: the big one takes minutes a call
    medvol_windows(small)
    monai_windows(small)
    times = time_calls(
        {
            "monai_sliding_window_inference": keep("monai", monai_windows),
            "medvol_predict_volume": keep("medvol", medvol_windows),
        },
        sizes.window_repeats,
        warm_up=False,
    )
    difference = float((outputs["medvol"] - outputs["monai"]).abs().max())
    return {
        "description": f"random {sizes.volume}³ volume, UNet {UNET}, patch {list(PATCH)}, fp32, "
        "overlap 0.5, Gaussian blending, 4 windows per batch",
        "baseline": "monai_sliding_window_inference",
        "results": summarize(times, "monai_sliding_window_inference"),
        "check": {"max_abs_difference_of_probabilities": difference},
    }


# -------------------------------------------------------------------------- main


def goals(cases: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in MODELS:
        batch = cases.get(f"batch_predict_{model}", {})
        if "results" in batch:
            speedup = batch["results"]["medvol_predict"]["speedup_over_baseline"]
            out[f"{model}: medvol predict >= 1.5x the sequential loop"] = {
                "speedup": speedup,
                "met": speedup >= 1.5,
            }
    window = cases.get("sliding_window")
    if window is None:
        return out
    ratio = window["results"]["medvol_predict_volume"]["ratio_to_baseline"]
    difference = window["check"]["max_abs_difference_of_probabilities"]
    out["predict_volume as fast as MONAI, same output"] = {
        "ratio": ratio,
        "max_abs_difference": difference,
        "met": ratio <= 1.05 and difference < 1e-5,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few volumes, a small window volume")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"default {DEFAULT_DATA}")
    parser.add_argument("--cases", type=int, help="override the number of volumes in part 1")
    parser.add_argument("--repeats", type=int, help="override the number of timed repeats in part 1")
    parser.add_argument("--only", choices=["batch", "window"], help="run one part")
    parser.add_argument("--model", choices=sorted(MODELS), help="part 1 with one model only")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.cases:
        sizes = Sizes(**{**asdict(sizes), "cases": args.cases})
    if args.repeats:
        sizes = Sizes(**{**asdict(sizes), "repeats": args.repeats})
    started = time.perf_counter()
    machine = environment()
    load_before = os.getloadavg()
    cases: dict[str, Any] = {}
    with stdout_to_stderr():
        if args.only in (None, "batch"):
            for model in MODELS if args.model is None else [args.model]:
                if (args.data / HIPPOCAMPUS).is_dir():
                    with tempfile.TemporaryDirectory(prefix="medvol-bench-predict-") as tmp:
                        cases[f"batch_predict_{model}"] = batch_case(args.data, Path(tmp), sizes, model)
                else:
                    message = f"skipped: {args.data / HIPPOCAMPUS} not found (pass --data DIR)"
                    log(message)
                    cases[f"batch_predict_{model}"] = {"skipped": message}
        if args.only in (None, "window"):
            cases["sliding_window"] = window_case(sizes)
    finish_report(
        {
            "quick": args.quick,
            "sizes": asdict(sizes),
            "timing": "wall-clock median of repeats after one untimed warm-up; calls interleaved",
            "environment": machine,
            "load_average_1_5_15_min": {
                "before": [round(v, 2) for v in load_before],
                "after": [round(v, 2) for v in os.getloadavg()],
                "note": "the machine is shared; a load above the core count means other processes competed",
            },
            "cases": cases,
            "goals": goals(cases),
        },
        started,
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
