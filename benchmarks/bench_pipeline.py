"""Training data pipeline benchmark on the hippocampus data: medvol against MONAI, in one run.

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_pipeline.py [--quick] [--out results.json]

The same work on every side: load a NIfTI image and its label, reorient to RAS,
resample to 1 mm (image linear, label nearest), z-score the image over the
whole scan, cache that, then per sample take a random (40, 56, 40) patch
(padded where the volume is smaller; a third of the patches centred on
foreground) and augment it (affine p=0.3 with ±15° and ±15 % scaling, Gaussian
noise p=0.15 with std 0.1, gamma p=0.3 in [0.7, 1.5]); batches of 4.

Pipelines:

1. ``medvol``: ``medvol.data.dataset.SegmentationDataset`` with a
   ``VolumeCache`` on disk (memory-mapped ``.npy`` entries), the augmenter from
   ``medvol.augment.build_augmenter``, a torch ``DataLoader`` with
   ``worker_init_fn=seed_worker``. Epoch 1 builds the cache, epoch 2 reads it.
2. ``monai_cache``: MONAI ``CacheDataset`` (the deterministic transforms cached
   in RAM when the dataset is built; that build is counted in epoch 1) and
   ``monai.data.DataLoader``.
3. ``monai_persistent``: MONAI ``PersistentDataset`` (the deterministic
   transforms cached on disk with ``torch.save`` during epoch 1).
4. ``medvol_no_augment`` (diagnostic, run once): ``medvol`` without the
   augmenter, to separate what the cache can save from what augmentation costs
   every epoch.
5. ``idle`` (memory reference, run once): the same DataLoader over a dataset
   that returns zeros of the batch's shape, to show what the worker processes
   themselves cost.

Every (pipeline, workers) configuration runs in a fresh Python process with an
empty cache, for ``num_workers`` 0 and 2, the pipelines interleaved. Memory: a
thread in that process samples, every 0.25 s, the resident set (``VmRSS``) and
the proportional set (``Pss`` from ``smaps_rollup``: shared pages divided among
the processes that share them) of the process and of its DataLoader workers,
and keeps the peak of the sums; ``getrusage`` adds the main process's peak and
the largest worker's peak. The JSON report goes to stdout (and ``--out``);
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_io import DEFAULT_DATA
from common import environment, finish_report, make_log, stdout_to_stderr

MiB = 1024 * 1024
HIPPOCAMPUS = Path("msd-hippocampus")
PIPELINES = ("medvol", "monai_cache", "monai_persistent")
DIAGNOSTICS = ("medvol_no_augment", "idle")  # run once: what augmentation costs, what workers cost
SAMPLE_INTERVAL_S = 0.25
IDLE_ITEMS, IDLE_ITEM_S = 80, 0.025


@dataclass(frozen=True)
class Sizes:
    """How big and how often: the full run or the ``--quick`` smoke test."""

    cases: int
    repeats: int
    workers: tuple[int, ...]
    batch_size: int = 4
    patch: tuple[int, int, int] = (40, 56, 40)
    epochs: int = 2


FULL = Sizes(cases=260, repeats=2, workers=(0, 2))
QUICK = Sizes(cases=8, repeats=1, workers=(0, 2))

# The augmentation, identical on both sides (medvol runs these MONAI transforms internally).
AFFINE_PROB, ROTATE_DEG, SCALE = 0.3, 15.0, 0.15
NOISE_PROB, NOISE_STD = 0.15, 0.1
GAMMA_PROB, GAMMA_RANGE = 0.3, (0.7, 1.5)


log = make_log("bench_pipeline")


# ------------------------------------------------------------------------ memory


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found.extend(int(child) for child in handle.read().split())
    except OSError:
        pass
    return found


class MemorySampler(threading.Thread):
    """Peak of the summed RSS and PSS of this process and its children, sampled."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peak_rss_kib = 0
        self.peak_pss_kib = 0
        self.max_processes = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        pids = [os.getpid(), *_children(os.getpid())]
        self.peak_rss_kib = max(self.peak_rss_kib, sum(_status_kib(p, "VmRSS:") for p in pids))
        self.peak_pss_kib = max(self.peak_pss_kib, sum(_pss_kib(p) for p in pids))
        self.max_processes = max(self.max_processes, len(pids))
        self.samples += 1

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.sample()

    def stop(self) -> dict[str, Any]:
        self._stop_event.set()
        self.join()
        self.sample()
        return {
            "peak_sum_pss_mib": round(self.peak_pss_kib / 1024, 1),
            "peak_sum_rss_mib": round(self.peak_rss_kib / 1024, 1),
            "main_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "largest_worker_peak_rss_mib": round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
            ),
            "max_processes": self.max_processes,
            "samples": self.samples,
        }


# --------------------------------------------------------------------- pipelines


def load_cases(path: Path) -> list[Any]:
    """The ``Case`` objects listed by the parent (id, image, label)."""
    from medvol.data.cases import Case

    return [
        Case(row["case_id"], (Path(row["image"]),), Path(row["label"]))
        for row in json.loads(path.read_text())
    ]


def medvol_dataset(cases: list[Any], sizes: Sizes, cache_dir: Path, augment_on: bool = True) -> Any:
    from medvol.augment import AugmentConfig, build_augmenter
    from medvol.data.cache import VolumeCache
    from medvol.data.dataset import SegmentationDataset
    from medvol.transforms import PreprocessConfig, ZScore

    augment = AugmentConfig(
        flip_axes=(),
        affine_prob=AFFINE_PROB,
        rotate_deg=ROTATE_DEG,
        scale_range=SCALE,
        bias_prob=0.0,
        blur_prob=0.0,
        noise_prob=NOISE_PROB,
        noise_std=NOISE_STD,
        brightness_prob=0.0,
        contrast_prob=0.0,
        gamma_prob=GAMMA_PROB,
        gamma_range=GAMMA_RANGE,
    )
    return SegmentationDataset(
        cases,
        PreprocessConfig(orientation="RAS", spacing_mm=(1.0, 1.0, 1.0)),
        ZScore(per_scan=True),
        VolumeCache(cache_dir),
        patch_size=sizes.patch,
        augmenter=build_augmenter(augment, seed=0) if augment_on else None,
        seed=0,
    )


def monai_transforms(sizes: Sizes) -> tuple[Any, Any]:
    """MONAI's deterministic part (cached) and random part, doing medvol's work."""
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        RandAdjustContrastd,
        RandAffined,
        RandCropByPosNegLabeld,
        RandGaussianNoised,
        Spacingd,
        SpatialPadd,
    )

    keys = ["image", "label"]
    deterministic = Compose(
        [
            LoadImaged(keys=keys),
            EnsureChannelFirstd(keys=keys),
            Orientationd(keys=keys, axcodes="RAS"),
            Spacingd(keys=keys, pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest")),
            NormalizeIntensityd(keys="image", channel_wise=True),
            SpatialPadd(keys=keys, spatial_size=sizes.patch),
        ]
    )
    random = Compose(
        [
            # pos=1, neg=2: a third of the patches centred on foreground, as medvol does
            RandCropByPosNegLabeld(
                keys=keys, label_key="label", spatial_size=sizes.patch, pos=1, neg=2, num_samples=1
            ),
            RandAffined(
                keys=keys,
                prob=AFFINE_PROB,
                rotate_range=(math.radians(ROTATE_DEG),) * 3,
                scale_range=(SCALE,) * 3,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandGaussianNoised(keys="image", prob=NOISE_PROB, std=NOISE_STD),
            RandAdjustContrastd(keys="image", prob=GAMMA_PROB, gamma=GAMMA_RANGE),
        ]
    )
    return deterministic, random


class IdleDataset:
    """Zeros of the batch's shape: what DataLoader workers cost with no data work.

    Each item sleeps ``IDLE_ITEM_S`` so that an epoch lasts long enough for the
    memory sampler to see the workers.
    """

    def __init__(self, length: int, patch: tuple[int, int, int]) -> None:
        self.length = length
        self.patch = patch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        time.sleep(IDLE_ITEM_S)
        return {"image": torch.zeros(1, *self.patch), "label": torch.zeros(1, *self.patch, dtype=torch.int64)}


def run_child(pipeline: str, workers: int, cases_path: Path, sizes: Sizes) -> dict[str, Any]:
    """In a fresh process: build the pipeline, run the epochs, measure time and memory."""
    # Every pipeline imports the same modules, before anything is timed.
    import monai.data
    import monai.transforms
    import torch
    from torch.utils.data import DataLoader

    import medvol.augment
    import medvol.data.dataset

    warnings.simplefilter("ignore")
    cases = load_cases(cases_path)
    generator = torch.Generator().manual_seed(0)
    common: dict[str, Any] = {
        "batch_size": sizes.batch_size,
        "shuffle": True,
        "num_workers": workers,
        "drop_last": True,
        "generator": generator,
    }
    with tempfile.TemporaryDirectory(prefix="medvol-bench-pipeline-") as tmp:
        sampler = MemorySampler()
        sampler.start()
        started = time.perf_counter()
        dataset: Any
        if pipeline in ("medvol", "medvol_no_augment"):
            dataset = medvol_dataset(cases, sizes, Path(tmp), augment_on=pipeline == "medvol")
            loader = DataLoader(dataset, worker_init_fn=medvol.data.dataset.seed_worker, **common)
        elif pipeline == "idle":
            dataset = IdleDataset(IDLE_ITEMS, sizes.patch)
            loader = DataLoader(dataset, **common)  # type: ignore[arg-type]
        else:
            deterministic, random = monai_transforms(sizes)
            files = [{"image": str(c.images[0]), "label": str(c.label)} for c in cases]
            transform = monai.transforms.Compose([*deterministic.transforms, *random.transforms])
            if pipeline == "monai_cache":
                dataset = monai.data.CacheDataset(
                    files, transform, cache_rate=1.0, num_workers=max(1, workers), progress=False
                )
            else:
                dataset = monai.data.PersistentDataset(files, transform, cache_dir=tmp)
            loader = monai.data.DataLoader(dataset, **common)
        setup_s = time.perf_counter() - started
        epochs = []
        shapes: dict[str, list[int]] = {}
        for epoch in range(sizes.epochs):
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            start = time.perf_counter()
            samples = 0
            for batch in loader:
                samples += int(batch["image"].shape[0])
                shapes = {key: list(batch[key].shape) for key in ("image", "label")}
            seconds = time.perf_counter() - start
            if epoch == 0:
                seconds += setup_s  # CacheDataset fills its cache when it is built
            epochs.append(
                {
                    "epoch": epoch + 1,
                    "seconds": round(seconds, 3),
                    "samples_per_s": round(samples / seconds, 2),
                }
            )
        memory = sampler.stop()
        cache_mib = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()) / MiB
    return {
        "pipeline": pipeline,
        "workers": workers,
        "cases": len(cases),
        "setup_s": round(setup_s, 3),
        "epochs": epochs,
        "batch_shapes": shapes,
        "disk_cache_mib": round(cache_mib, 1),
        "memory": memory,
    }


def child_main(pipeline: str, workers: int, cases_path: Path, quick: bool) -> None:
    sizes = QUICK if quick else FULL
    # Libraries print notices to stdout; keep stdout for the JSON line alone.
    stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        result = run_child(pipeline, workers, cases_path, sizes)
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
        os.close(stdout)
    print(json.dumps(result))


# ------------------------------------------------------------------------ checks


def same_preprocessing(cases: list[Any], sizes: Sizes) -> dict[str, Any]:
    """Do medvol's cached volume and MONAI's deterministic output agree (before padding)?"""
    import numpy as np

    warnings.simplefilter("ignore")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="medvol-bench-check-") as tmp:
        dataset = medvol_dataset(cases[:3], sizes, Path(tmp))
        deterministic, _ = monai_transforms(sizes)
        without_pad = deterministic.transforms[:-1]
        for index, case in enumerate(cases[:3]):
            entry = dataset.entry(index)
            data: dict[str, Any] = {"image": str(case.images[0]), "label": str(case.label)}
            for transform in without_pad:
                data = transform(data)
            monai_image = np.asarray(data["image"])
            monai_label = np.asarray(data["label"])
            medvol_image, medvol_label = entry.arrays["image"], entry.arrays["label"]
            row: dict[str, Any] = {
                "medvol_shape": list(medvol_image.shape),
                "monai_shape": list(monai_image.shape),
            }
            if medvol_image.shape == monai_image.shape:
                row["image_max_abs_diff"] = round(float(np.abs(medvol_image - monai_image).max()), 5)
                row["label_equal"] = bool(
                    np.array_equal(medvol_label, monai_label.astype(medvol_label.dtype))
                )
            out[case.case_id] = row
    return out


# -------------------------------------------------------------------------- main


def run_configuration(pipeline: str, workers: int, cases_path: Path, quick: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", pipeline, str(workers), str(cases_path)]
    if quick:
        command.append("--quick")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{pipeline} with {workers} workers failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict[str, Any]], sizes: Sizes) -> dict[str, Any]:
    """Median samples/s per epoch and median peak memory over the repeats of one configuration."""
    out: dict[str, Any] = {}
    for epoch in range(sizes.epochs):
        values = [run["epochs"][epoch]["samples_per_s"] for run in runs]
        out[f"epoch{epoch + 1}_samples_per_s"] = round(statistics.median(values), 2)
        out[f"epoch{epoch + 1}_runs"] = values
    if sizes.epochs >= 2:
        out["epoch2_over_epoch1"] = round(out["epoch2_samples_per_s"] / out["epoch1_samples_per_s"], 2)
    for key in ("peak_sum_pss_mib", "peak_sum_rss_mib", "main_peak_rss_mib", "largest_worker_peak_rss_mib"):
        out[key] = round(statistics.median(run["memory"][key] for run in runs), 1)
    out["disk_cache_mib"] = runs[0]["disk_cache_mib"]
    out["batch_shapes"] = runs[0]["batch_shapes"]
    return out


def goals(results: dict[str, dict[str, Any]], workers: tuple[int, ...]) -> dict[str, Any]:
    """Read the issue's goals off the measured figures."""
    out: dict[str, Any] = {}
    for w in workers:
        medvol = results[f"medvol/w{w}"]
        for epoch in ("epoch1", "epoch2"):
            best_monai = max(results[f"{p}/w{w}"][f"{epoch}_samples_per_s"] for p in PIPELINES[1:])
            ratio = medvol[f"{epoch}_samples_per_s"] / best_monai
            out[f"{w} workers, {epoch}: medvol at least the faster MONAI pipeline"] = {
                "medvol_over_best_monai": round(ratio, 3),
                "met": ratio >= 1.0,
            }
        out[f"{w} workers: medvol's cached epoch at least 5x faster than the first"] = {
            "epoch2_over_epoch1": medvol["epoch2_over_epoch1"],
            "met": medvol["epoch2_over_epoch1"] >= 5.0,
        }
    if 0 in workers and 2 in workers:
        idle = results["idle/w2"]["peak_sum_pss_mib"] - results["idle/w0"]["peak_sum_pss_mib"]
        for pipeline in PIPELINES:
            growth = (
                results[f"{pipeline}/w2"]["peak_sum_pss_mib"] - results[f"{pipeline}/w0"]["peak_sum_pss_mib"]
            )
            out[f"{pipeline}: peak memory (PSS, all processes) with 2 workers vs 0"] = {
                "growth_mib": round(growth, 1),
                "idle_workers_growth_mib": round(idle, 1),
                "growth_beyond_idle_workers_mib": round(growth - idle, 1),
                "note": "the two worker processes themselves cost idle_workers_growth_mib; "
                "the goal asks that the data adds nothing per worker",
            }
        # Not growing at all is impossible (a worker is a process); what must not happen is a
        # copy of the data per worker. Growth beyond idle workers below one copy of the cache
        # says the data is shared; the no-augmentation diagnostic isolates the augmenter's buffers.
        medvol_extra = out["medvol: peak memory (PSS, all processes) with 2 workers vs 0"][
            "growth_beyond_idle_workers_mib"
        ]
        cache_mib = results["medvol/w0"]["disk_cache_mib"]
        row: dict[str, Any] = {
            "growth_beyond_idle_workers_mib": medvol_extra,
            "cache_mib": cache_mib,
            "met": medvol_extra < cache_mib,
            "criterion": "growth beyond two idle workers smaller than one copy of the cache "
            "(a copy per worker would add 2x the cache)",
        }
        if "medvol_no_augment/w2" in results:
            row["without_augmentation_growth_beyond_idle_workers_mib"] = round(
                results["medvol_no_augment/w2"]["peak_sum_pss_mib"]
                - results["medvol_no_augment/w0"]["peak_sum_pss_mib"]
                - idle,
                1,
            )
        out["medvol: data not duplicated per worker (memory beyond the worker processes)"] = row
    return out


def run(sizes: Sizes, data: Path, quick: bool) -> dict[str, Any]:
    from medvol.data import validate

    root = data / HIPPOCAMPUS
    report = validate(root)
    usable = sorted(report.usable, key=lambda c: c.case_id)
    cases = usable[: sizes.cases]
    log(f"{len(report.usable)} usable of {len(report.cases)} cases; using the first {len(cases)} by id")
    with tempfile.TemporaryDirectory(prefix="medvol-bench-pipeline-") as tmp:
        cases_path = Path(tmp) / "cases.json"
        rows = [{"case_id": c.case_id, "image": str(c.images[0]), "label": str(c.label)} for c in cases]
        cases_path.write_text(json.dumps(rows))
        for case in cases:  # warm the page cache, so that no configuration pays for cold reads
            for path in (*case.images, case.label):
                path.read_bytes()
        log("checking that medvol and MONAI preprocess alike")
        check = same_preprocessing(cases, sizes)
        raw: dict[str, list[dict[str, Any]]] = {}
        for repeat in range(sizes.repeats):
            for workers in sizes.workers:
                for pipeline in (*PIPELINES, *DIAGNOSTICS):
                    if pipeline in DIAGNOSTICS and repeat > 0:
                        continue
                    log(f"repeat {repeat + 1}/{sizes.repeats}: {pipeline}, {workers} workers")
                    result = run_configuration(pipeline, workers, cases_path, quick)
                    log(
                        "  "
                        + ", ".join(
                            f"epoch {e['epoch']} {e['samples_per_s']} samples/s" for e in result["epochs"]
                        )
                        + f", peak PSS {result['memory']['peak_sum_pss_mib']} MiB"
                    )
                    raw.setdefault(f"{pipeline}/w{workers}", []).append(result)
    results = {name: summarize(runs, sizes) for name, runs in raw.items()}
    for workers in sizes.workers:
        for pipeline in PIPELINES:
            row = results[f"{pipeline}/w{workers}"]
            for epoch in ("epoch1", "epoch2"):
                row[f"{epoch}_ratio_to_monai_cache"] = round(
                    row[f"{epoch}_samples_per_s"]
                    / results[f"monai_cache/w{workers}"][f"{epoch}_samples_per_s"],
                    3,
                )
    return {
        "cases": [c.case_id for c in cases],
        "check_preprocessing": check,
        "results": results,
        "goals": goals(results, sizes.workers),
        "runs": raw,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 cases, one repeat (smoke test)")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"default {DEFAULT_DATA}")
    parser.add_argument("--cases", type=int, help="override the number of cases")
    parser.add_argument("--repeats", type=int, help="override the number of repeats")
    parser.add_argument("--child", nargs=3, metavar=("PIPELINE", "WORKERS", "CASES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child[0], int(args.child[1]), Path(args.child[2]), args.quick)
        return 0
    sizes = QUICK if args.quick else FULL
    if args.cases:
        sizes = Sizes(**{**asdict(sizes), "cases": args.cases})
    if args.repeats:
        sizes = Sizes(**{**asdict(sizes), "repeats": args.repeats})
    if not (args.data / HIPPOCAMPUS).is_dir():
        log(
            f"{args.data / HIPPOCAMPUS} not found: this benchmark needs the shared "
            "hippocampus data (--data DIR)"
        )
        return 1
    started = time.perf_counter()
    machine = environment()
    with stdout_to_stderr():
        report = run(sizes, args.data, args.quick)
    finish_report(
        {
            "quick": args.quick,
            "sizes": asdict(sizes),
            "timing": "wall-clock seconds of each epoch (DataLoader iteration only, no model); "
            "epoch 1 includes building the dataset; one fresh process per configuration; "
            "median over repeats",
            "memory": f"peak of the summed VmRSS / Pss of the process and its DataLoader workers, "
            f"sampled every {SAMPLE_INTERVAL_S} s; getrusage for the main process and the largest worker",
            "environment": machine,
            **report,
        },
        started,
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
