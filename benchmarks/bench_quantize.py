"""int8 model packages against fp32 ones: the cost on held-out cases, the speed, and the CPU engines.

Usage (from the project root)::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_quantize.py \\
        --unet RUNS/hippocampus-cpu-seed0 --resnet RUNS/adrenalmnist3d-cpu-seed0 [--quick] [--out r.json]

The models are finished runs of ``medvol reproduce hippocampus --budget cpu``
(UNet, nnU-Net fold 0) and ``medvol reproduce adrenalmnist3d --budget cpu``
(ResNet18, 28³), each exported twice from its **last** checkpoint (never
chosen on the cases scored here): ``medvol export`` (fp32) and ``medvol export
--int8`` (calibrated on 16 training cases, ``medvol.export.quantize``).

Parts:

1. ``cost``: both packages predict the held-out cases through medvol's own
   path (``segment``, ``classify``). UNet: Dice of classes 1 and 2 per case on
   the run's fold-0 validation cases (``split.json`` ``val``: neither trained
   on nor calibrated with). ResNet: AUC of class 1 on the ``val`` split of the
   ``.npz`` (never ``test``). The paired difference fp32 − int8 with a 95%
   percentile bootstrap CI over cases (the same cases drawn for both).
2. ``speed``: per scan at 1 thread, engines interleaved: torch eager (the
   run), ONNX Runtime fp32 and int8 (the packages), OpenVINO fp32 and int8
   (the same ONNX files) when it is installed: ``segment`` on held-out
   hippocampus volumes, ``classify_scan`` on validation volumes; and the
   network alone (4 windows 40×56×40; one 28³ volume).
3. ``engines``: the UNet network alone at 1 thread under ONNX Runtime session
   options (graph optimisation level, intra-op spinning) and OpenVINO, with
   each one's largest |logit difference| from torch.

The JSON report goes to stdout (and ``--out``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_export import forward_loop, scan_loop
from bench_io import time_calls
from common import environment, finish_report, make_log, stdout_to_stderr

from medvol.data.cases import load_case
from medvol.engine.inference import (
    TrainedModel,
    classify,
    load_trained,
    prepare_input,
    segment,
)
from medvol.export import export_run, load_package
from medvol.export.quantize import network_inputs
from medvol.export.runtime import OnnxNetwork
from medvol.metrics import bootstrap_ci, dice_per_class
from medvol.metrics.classification import binary_auc
from medvol.tasks.base import select_cases
from medvol.volume import Volume

log = make_log("bench_quantize")


@dataclass(frozen=True)
class Sizes:
    """How much: the full run or the ``--quick`` smoke test."""

    cost_cases: int | None  # held-out cases scored (None: all)
    speed_volumes: int
    classifier_volumes: int
    repeats: int
    n_resamples: int


FULL = Sizes(cost_cases=None, speed_volumes=12, classifier_volumes=64, repeats=5, n_resamples=2000)
QUICK = Sizes(cost_cases=6, speed_volumes=2, classifier_volumes=8, repeats=1, n_resamples=200)


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def summarize(times: dict[str, list[float]], baseline: str, items: int) -> dict[str, Any]:
    """Median milliseconds per item and each engine's time over the baseline's."""
    base = statistics.median(times[baseline])
    return {
        name: {
            "per_item_ms": round(1000 * statistics.median(runs) / items, 3),
            "time_ratio_to_baseline": round(statistics.median(runs) / base, 3),
            "runs_s": [round(t, 4) for t in runs],
        }
        for name, runs in times.items()
    }


def one_thread(call: Callable[[], object]) -> Callable[[], object]:
    """``call`` with torch limited to 1 thread (the numpy/torch steps around every engine)."""

    def run() -> object:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return call()
        finally:
            torch.set_num_threads(previous)

    return run


# ------------------------------------------------------------------ engines


class OpenVinoNetwork:
    """An ONNX file compiled by OpenVINO for the CPU: images ``(B, C, X, Y, Z)`` → logits."""

    def __init__(self, path: Path, threads: int) -> None:
        import openvino as ov

        config = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.model = ov.Core().compile_model(str(path), "CPU", config)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(images, dtype=np.float32)
        return np.asarray(self.model(array)[0], dtype=np.float32)


def ort_network(
    path: Path, threads: int = 1, level: str = "ORT_ENABLE_ALL", spinning: bool = True
) -> OnnxNetwork:
    """An ONNX Runtime CPU session of ``path`` with the given graph optimisation level and spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return OnnxNetwork(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))


def engines(run_dir: Path, packages: dict[str, Path]) -> dict[str, TrainedModel]:
    """torch eager (the run), ONNX Runtime fp32 and int8 (the packages), OpenVINO on both networks."""
    models = {"torch_eager": load_trained(run_dir, "last")}
    for precision, package in packages.items():
        models[f"onnxruntime_{precision}"] = load_package(package, threads=1)
    if importlib.util.find_spec("openvino") is not None:
        for precision, package in packages.items():
            network = OpenVinoNetwork(package / "model.onnx", threads=1)
            models[f"openvino_{precision}"] = replace(models[f"onnxruntime_{precision}"], network=network)
    return models


# --------------------------------------------------------------------- cost


def unet_cost(run_dir: Path, packages: dict[str, Path], sizes: Sizes) -> dict[str, Any]:
    """Dice per class per held-out case, fp32 and int8 packages, and the paired difference."""
    trained = load_trained(run_dir, "last")
    selection = select_cases(trained.run, trained.config, None, "val", "label")
    cases = selection.cases[: sizes.cost_cases]
    models = {precision: load_package(package) for precision, package in packages.items()}
    classes = list(range(1, trained.num_classes))
    dice: dict[str, list[list[float]]] = {precision: [] for precision in models}
    for index, case in enumerate(cases):
        image, label = load_case(case)
        assert label is not None
        for precision, model in models.items():
            predicted = segment(model, image).label.array[0]
            scores = dice_per_class(predicted, label.array[0], classes)
            dice[precision].append([scores[k] for k in classes])
        if index % 10 == 0:
            log(f"unet cost: {index + 1}/{len(cases)} cases")
    fp32, int8 = (np.array(dice[p]) for p in ("fp32", "int8"))
    result: dict[str, Any] = {
        "cases": [case.case_id for case in cases],
        "errors": selection.errors,
        "metric": "Dice per case (empty in both: NaN, left out), mean over cases",
        "classes": {},
    }
    columns = {**{f"class_{k}": i for i, k in enumerate(classes)}, "mean_over_classes": None}
    for name, column in columns.items():
        a = fp32[:, column] if column is not None else np.nanmean(fp32, axis=1)
        b = int8[:, column] if column is not None else np.nanmean(int8, axis=1)
        interval = bootstrap_ci(a - b, np.nanmean, sizes.n_resamples, 0.95, seed=0)
        result["classes"][name] = {
            "fp32": round(float(np.nanmean(a)), 5),
            "int8": round(float(np.nanmean(b)), 5),
            "difference_fp32_minus_int8": interval_record(interval),
            "cases_differing": int(np.sum(np.abs(a - b) > 0)),
        }
    result["per_case"] = {"fp32": fp32.round(5).tolist(), "int8": int8.round(5).tolist()}
    return result


def resnet_cost(run_dir: Path, packages: dict[str, Path], sizes: Sizes) -> dict[str, Any]:
    """AUC of class 1 on the validation split, fp32 and int8 packages, and the paired difference."""
    from medvol.tasks import ClassificationTask

    trained = load_trained(run_dir, "last")
    assert isinstance(trained.task, ClassificationTask)
    scored = trained.task.scored_cases(trained.recipe, trained.run, None, "val")
    items = list(scored.items)[: sizes.cost_cases]
    inputs = np.stack([prepared for _, _, prepared in items])
    targets = np.array([target for _, target, _ in items])
    probabilities = {p: classify(load_package(package), inputs) for p, package in packages.items()}
    fp32, int8 = probabilities["fp32"], probabilities["int8"]

    def difference(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return binary_auc(t, a[:, 1]) - binary_auc(t, b[:, 1])

    interval = bootstrap_ci((targets, fp32, int8), difference, sizes.n_resamples, 0.95, seed=0)
    threshold = {p: (v[:, 1] >= 0.5).astype(int) for p, v in probabilities.items()}
    return {
        "split": "val",
        "cases": len(targets),
        "metric": "AUC of the class-1 softmax probability",
        "fp32": round(binary_auc(targets, fp32[:, 1]), 5),
        "int8": round(binary_auc(targets, int8[:, 1]), 5),
        "difference_fp32_minus_int8": interval_record(interval),
        "max_abs_probability_difference": float(np.abs(fp32 - int8).max()),
        "decisions_differing_at_0.5": int(np.sum(threshold["fp32"] != threshold["int8"])),
    }


def interval_record(interval: Any) -> dict[str, Any]:
    estimate, low, high = interval
    return {"estimate": round(estimate, 5), "ci95": [round(low, 5), round(high, 5)], "n": interval.n}


def meets_rule(cost: dict[str, Any], limit: float = 0.005) -> bool:
    """Whether every fp32 − int8 difference has its 95% CI upper bound below ``limit``."""
    entries = (
        [cost["difference_fp32_minus_int8"]]
        if "fp32" in cost
        else [c["difference_fp32_minus_int8"] for c in cost["classes"].values()]
    )
    return all(entry["ci95"][1] < limit for entry in entries)


# -------------------------------------------------------------------- speed


def speed(models: dict[str, TrainedModel], volumes: list[Volume], repeats: int) -> dict[str, Any]:
    """Per scan (``segment`` / ``classify_scan``) and network alone, 1 thread, engines interleaved."""
    first = models["torch_eager"]
    segmenter = first.task.output == "segmentation"
    prepared = prepare_input(first, volumes[0]).array
    batch = np.concatenate((network_inputs(first, prepared) * 4)[:4]) if segmenter else prepared[np.newaxis]

    before = load_average()
    per_scan = time_calls({n: one_thread(scan_loop(m, volumes)) for n, m in models.items()}, repeats)
    alone = time_calls({n: one_thread(forward_loop(m, batch)) for n, m in models.items()}, repeats)
    expected = np.asarray(first.network(batch))
    return {
        "threads": 1,
        "load_average_before_after": [before, load_average()],
        "per_scan": {"scans": len(volumes), **summarize(per_scan, "onnxruntime_fp32", len(volumes))},
        "network_only": {"input": list(batch.shape), **summarize(alone, "onnxruntime_fp32", 10)},
        "max_abs_logit_difference_from_torch": {
            name: float(np.abs(np.asarray(m.network(batch)) - expected).max()) for name, m in models.items()
        },
    }


def session_options(run_dir: Path, package: Path, volume: Volume, repeats: int) -> dict[str, Any]:
    """The UNet network alone at 1 thread: ONNX Runtime session options and OpenVINO against torch."""
    trained = load_trained(run_dir, "last")
    windows = network_inputs(trained, prepare_input(trained, volume).array)
    batch = np.concatenate((windows * 4)[:4])
    network = package / "model.onnx"
    variants: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "torch_eager": trained.network,
        "ort_all (default)": ort_network(network),
        "ort_all_no_spinning": ort_network(network, spinning=False),
        "ort_extended": ort_network(network, level="ORT_ENABLE_EXTENDED"),
        "ort_basic": ort_network(network, level="ORT_ENABLE_BASIC"),
        "ort_disabled": ort_network(network, level="ORT_DISABLE_ALL"),
    }
    if importlib.util.find_spec("openvino") is not None:
        variants["openvino"] = OpenVinoNetwork(network, threads=1)

    def calls(run: Callable[[np.ndarray], np.ndarray]) -> Callable[[], object]:
        return one_thread(lambda: [run(batch) for _ in range(10)])

    before = load_average()
    times = time_calls({name: calls(run) for name, run in variants.items()}, repeats)
    expected = np.asarray(trained.network(batch))
    result = summarize(times, "torch_eager", 10)
    for name, run in variants.items():
        result[name]["max_abs_logit_difference_from_torch"] = float(np.abs(run(batch) - expected).max())
    return {"input": list(batch.shape), "load_average_before_after": [before, load_average()], **result}


# --------------------------------------------------------------------- main


def export_both(run_dir: Path, root: Path) -> dict[str, Any]:
    """``medvol export`` and ``medvol export --int8`` of the run's last checkpoint, timed."""
    packages, seconds = {}, {}
    for precision in ("fp32", "int8"):
        start = time.perf_counter()
        packages[precision] = export_run(run_dir, root / precision, "last", int8=precision == "int8")
        seconds[precision] = round(time.perf_counter() - start, 1)
    return {"packages": packages, "export_s": seconds}


def hippocampus_volumes(run_dir: Path, count: int) -> list[Volume]:
    """Images of the first ``count`` held-out (validation) cases of the run."""
    trained = load_trained(run_dir, "last")
    cases = select_cases(trained.run, trained.config, None, "val", "label").cases[:count]
    return [load_case(case)[0] for case in cases]


def adrenal_volumes(run_dir: Path, count: int) -> list[Volume]:
    """Validation volumes of the run's ``.npz`` as scans (uint8 values, 1 mm)."""
    from medvol.io.medmnist import load_medmnist

    trained = load_trained(run_dir, "last")
    images = load_medmnist(trained.config.data.root)["val"].images[:count]
    return [Volume(image[np.newaxis].astype(np.float32), np.eye(4), {}) for image in images]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unet", type=Path, required=True, help="hippocampus UNet run folder (fold 0)")
    parser.add_argument("--resnet", type=Path, required=True, help="AdrenalMNIST3D ResNet run folder")
    parser.add_argument("--quick", action="store_true", help="few cases, one repeat")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    machine = environment()
    load_before = load_average()
    cases: dict[str, Any] = {}
    with stdout_to_stderr(), tempfile.TemporaryDirectory(prefix="medvol-bench-quantize-") as tmp:
        runs = {"unet": args.unet, "resnet": args.resnet}
        for name, run_dir in runs.items():
            log(f"{name}: exporting fp32 and int8 packages of {run_dir}")
            exported = export_both(run_dir, Path(tmp) / name)
            packages = exported["packages"]
            log(f"{name}: cost on held-out cases")
            cost = (unet_cost if name == "unet" else resnet_cost)(run_dir, packages, sizes)
            log(f"{name}: speed at 1 thread")
            if name == "unet":
                volumes = hippocampus_volumes(run_dir, sizes.speed_volumes)
            else:
                volumes = adrenal_volumes(run_dir, sizes.classifier_volumes)
            timing = speed(engines(run_dir, packages), volumes, sizes.repeats)
            cases[name] = {
                "run": str(run_dir),
                "checkpoint": "last",
                "export_s": exported["export_s"],
                "calibration": load_package_spec(packages["int8"])["calibration"],
                "cost": cost,
                "meets_0.005_rule": meets_rule(cost),
                "speed": timing,
                "int8_over_fp32_per_scan_time": timing["per_scan"]["onnxruntime_int8"][
                    "time_ratio_to_baseline"
                ],
            }
            if name == "unet":
                log("unet: ONNX Runtime session options and OpenVINO, network alone")
                cases[name]["session_options"] = session_options(
                    run_dir, packages["fp32"], volumes[0], sizes.repeats
                )
    finish_report(
        {
            "quick": args.quick,
            "sizes": asdict(sizes),
            "timing": "wall-clock median of repeats after one untimed warm-up; engines interleaved; 1 thread",
            "environment": machine,
            "versions": versions(),
            "load_average_1_5_15_min": {
                "before": load_before,
                "after": load_average(),
                "note": "the machine is shared; a load above the core count means other processes competed",
            },
            "rule": "int8 may be on by default only if every fp32 - int8 difference has a 95% CI upper bound "
            "below 0.005 (Dice, AUC) and int8 is faster per scan",
            "cases": cases,
        },
        started,
        args.out,
    )
    return 0


def load_package_spec(package: Path) -> dict[str, Any]:
    from medvol.export import read_spec

    return read_spec(package)["model"]["quantization"]


def versions() -> dict[str, str]:
    import onnxruntime

    found = {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__}
    if importlib.util.find_spec("openvino") is not None:
        import openvino

        found["openvino"] = openvino.__version__
    return found


if __name__ == "__main__":
    sys.exit(main())
