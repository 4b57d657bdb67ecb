"""Start-up benchmark: dataset checking at every ``medvol train`` and ``medvol evaluate``, before and after.

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_startup.py [--quick] [--out results.json] [--baseline main]

"Before" is the medvol of ``--baseline`` (a git ref, default ``main``),
exported with ``git archive`` into a temporary folder; "after" is this
checkout's. Both run as ``python -m medvol`` in fresh processes, one after the
other, on the same data, with ``MEDVOL_CACHE_DIR`` pointing at a temporary
folder that starts empty. For each dataset:

- ``train``: time from starting ``medvol train`` to its first training step
  (the first batch drawn, as measured by a wrapper around
  ``medvol.engine.train._train_one_epoch`` that stops the process there),
  started twice with each medvol (the second start reuses the run folder of
  the first, as after a failed start). "After" is started a third time after
  touching ``--touch`` images (their modification time set 1 s later), to show
  that start-up grows with the files changed.
- ``evaluate``: the wall time of ``medvol evaluate RUN --split val`` on a run
  trained for the benchmark (1 epoch on 16 training cases), whose validation
  split is then set to the first ``--scored`` (default 20) validation cases
  of nnU-Net fold 0 (the weights do not change what evaluating costs), twice
  with each medvol; "after" starts without stored checks (the first run
  stores them).
- ``imports_s``: the wall time of a process that only imports what
  ``medvol train`` imports (torch, MONAI, scikit-learn...) and exits: the
  floor of any start, which no stored check can remove.

Each timing also records the seconds spent in ``medvol.data.cases.validate``
(the dataset check). Datasets: ``generated`` (``--cases`` cases, default
2,000; ``--quick``: 200), small int16 volumes of random shapes from 20³ to 32³
voxels with a sphere label, in ``images/`` + ``labels/``; ``hippocampus``
(``../shared/data/msd-hippocampus``, 260 clean pairs, 3 unusable ids; skipped
when missing). Absolute times on a shared machine drift between runs: read the
ratios within one run (second start / first start, after / before).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import yaml
from common import environment, finish_report, make_log

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's medvol, whichever one the environment installed
DEFAULT_DATA = REPO.parent / "shared" / "data"
log = make_log("bench_startup")

DRIVER = textwrap.dedent(
    """
    import json, sys, time
    source, record, *argv = sys.argv[1:]
    sys.path.insert(0, source)
    import medvol.data.cases as cases
    import medvol.engine.train as train

    spent = [0.0]
    validate = cases.validate

    def timed_validate(*args, **kwargs):
        started = time.perf_counter()
        try:
            return validate(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - started

    def write(first_step):
        with open(record, "w") as handle:
            json.dump({"first_step_at": first_step, "validate_s": spent[0], "medvol": cases.__file__}, handle)

    def first_step(trained, loader, *args, **kwargs):
        next(iter(loader))
        write(time.time())
        raise SystemExit(0)

    cases.validate = timed_validate
    train._train_one_epoch = first_step
    from medvol.cli import main
    code = main(argv)
    write(None)
    sys.exit(code)
    """
)


def generate_dataset(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` cases in ``images/`` + ``labels/``: int16 volumes of random shapes with a sphere label."""
    rng = np.random.default_rng(seed)
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for number in range(count):
        shape = tuple(int(n) for n in rng.integers(20, 33, size=3))
        grid = np.indices(shape).astype(np.float32)
        centre = np.array(shape, np.float32)[:, None, None, None] / 2
        distance = np.sqrt(((grid - centre) ** 2).sum(axis=0))
        radius = rng.uniform(4, 8)
        image = (200 * (distance < radius) + rng.normal(0, 20, shape)).astype(np.int16)
        label = (distance < radius).astype(np.uint8)
        name = f"case_{number:04d}.nii.gz"
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "images" / name)
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labels" / name)
    return root


def config(data_root: Path, runs: Path, name: str, patch: list[int], split: dict[str, Any]) -> dict[str, Any]:
    """A small segmentation config (UNet base 4 filters, 3 levels) on ``data_root``."""
    return {
        "data": {
            "task": "segmentation",
            "root": str(data_root),
            "split": split,
            "num_classes": 3,
            "patch_size": patch,
            "num_workers": 0,
        },
        "preprocess": {"orientation": "RAS", "spacing_mm": [1.0, 1.0, 1.0]},
        "normalize": {"type": "ZScore", "params": {"per_scan": True}},
        "model": {
            "name": "unet",
            "options": {"in_channels": 1, "num_classes": 3, "base_filters": 4, "num_levels": 3},
        },
        "loss": {"name": "dice_ce"},
        "optimizer": {"name": "adamw", "lr": 0.001},
        "train": {
            "epochs": 1,
            "batch_size": 2,
            "val_every": 1,
            "metric": "dice",
            "metric_mode": "max",
            "device": "cpu",
        },
        "tracking": {"output_dir": str(runs), "name": name, "tensorboard": False},
    }


def run_medvol(source: Path, argv: list[str], work: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``medvol ARGV`` from ``source`` in a fresh process; wall time, first step and check time."""
    record = work / "record.json"
    record.unlink(missing_ok=True)
    driver = work / "driver.py"
    driver.write_text(DRIVER)
    started_at, started = time.time(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(driver), str(source), str(record), *argv],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0 or not record.is_file():
        raise RuntimeError(f"medvol {' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    measured = json.loads(record.read_text())
    if not measured["medvol"].startswith(str(source)):
        raise RuntimeError(f"imported {measured['medvol']}, not the medvol of {source}")
    result = {"wall_s": round(wall, 3), "check_s": round(measured["validate_s"], 3)}
    if measured["first_step_at"] is not None:
        result["first_step_s"] = round(measured["first_step_at"] - started_at, 3)
    return result


def imports_floor(source: Path, work: Path, env: dict[str, str]) -> float:
    """Seconds a process takes to import what ``medvol train`` imports, and exit."""
    modules = "medvol.cli, medvol.engine.train, medvol.tasks.segmentation, medvol.data.cases, monai, sklearn"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(source)!r}); import {modules}"],
        cwd=work,
        env=env,
        check=True,
    )
    return round(time.perf_counter() - started, 3)


def touch(paths: list[Path]) -> None:
    """Set each file's modification time 1 s later (its content is unchanged)."""
    for path in paths:
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def bench_dataset(
    name: str,
    data_root: Path,
    patch: list[int],
    sources: dict[str, Path],
    work: Path,
    touched: int,
    scored: int,
) -> dict[str, Any]:
    """Train start-up and evaluate wall time on one dataset, before and after."""
    from medvol.data.cases import validate
    from medvol.data.splits import nnunet_folds

    cache = work / f"{name}-check-cache"
    env = {**os.environ, "MEDVOL_CACHE_DIR": str(cache), "PYTHONPATH": ""}
    runs = work / f"{name}-runs"
    usable = sorted(case.case_id for case in validate(data_root, store=False).usable)
    fold = nnunet_folds(usable)[0]
    result: dict[str, Any] = {
        "data": str(data_root),
        "usable_cases": len(usable),
        "val_cases": len(fold["val"]),
    }
    result["imports_s"] = imports_floor(sources["after"], work, env)
    log(f"{name} imports alone: {result['imports_s']} s")

    start: dict[str, Any] = {}
    for side, source in sources.items():
        shutil.rmtree(cache, ignore_errors=True)
        path = work / f"{name}-{side}-start.yaml"
        path.write_text(
            yaml.safe_dump(config(data_root, runs, f"{side}-start", patch, {"method": "nnunet", "fold": 0}))
        )
        runs_of_side = []
        for attempt in ("first", "second"):
            runs_of_side.append(run_medvol(source, ["train", str(path)], work, env))
            log(f"{name} train {side} {attempt}: {runs_of_side[-1]}")
        start[side] = {"first": runs_of_side[0], "second": runs_of_side[1]}
    touch(sorted((data_root / "images").glob("*.nii.gz"))[:touched])
    after_config = work / f"{name}-after-start.yaml"
    start["after"]["touched"] = {
        "files": touched,
        **run_medvol(sources["after"], ["train", str(after_config)], work, env),
    }
    log(f"{name} train after, {touched} files touched: {start['after']['touched']}")
    result["train_start"] = start

    split_file = work / f"{name}-split.json"
    split_file.write_text(json.dumps([{"train": fold["train"][:16], "val": fold["val"][:2]}]))
    trained = config(
        data_root, runs, "evaluated", patch, {"method": "file", "file": str(split_file), "fold": 0}
    )
    (work / f"{name}-evaluated.yaml").write_text(yaml.safe_dump(trained))
    training = subprocess.run(
        [sys.executable, "-m", "medvol", "train", str(work / f"{name}-evaluated.yaml")],
        cwd=REPO,
        env={**env, "MEDVOL_CACHE_DIR": str(work / "unused-cache")},
        capture_output=True,
        text=True,
    )
    if training.returncode != 0:
        raise RuntimeError(f"training the evaluated run failed:\n{training.stderr[-3000:]}")
    # The weights do not change the cost of evaluating: the run's validation split becomes the cases scored.
    split_json = runs / "evaluated" / "split.json"
    split_json.write_text(json.dumps({**json.loads(split_json.read_text()), "val": fold["val"][:scored]}))
    result["evaluated_cases"] = len(fold["val"][:scored])
    evaluate: dict[str, Any] = {}
    for side, source in sources.items():
        shutil.rmtree(cache, ignore_errors=True)
        timings = {}
        for attempt in ("first", "second"):
            out = work / f"{name}-{side}-{attempt}-evaluation"
            argv = [
                "evaluate",
                str(runs / "evaluated"),
                "--split",
                "val",
                "--out",
                str(out),
                "--n-resamples",
                "100",
            ]
            timings[attempt] = run_medvol(source, argv, work, env)
            log(f"{name} evaluate {side} {attempt}: {timings[attempt]}")
        evaluate[side] = timings
    result["evaluate"] = evaluate
    result["ratios"] = ratios(start, evaluate)
    return result


def ratios(start: dict[str, Any], evaluate: dict[str, Any]) -> dict[str, float]:
    """Second / first start, after / before, for the train start-up and evaluate's wall time."""
    after, before = start["after"], start["before"]
    return {
        "train_second_over_first_after": round(
            after["second"]["first_step_s"] / after["first"]["first_step_s"], 3
        ),
        "train_second_over_first_before": round(
            before["second"]["first_step_s"] / before["first"]["first_step_s"], 3
        ),
        "train_second_after_over_before": round(
            after["second"]["first_step_s"] / before["second"]["first_step_s"], 3
        ),
        "train_check_second_over_first_after": round(
            after["second"]["check_s"] / max(after["first"]["check_s"], 1e-9), 4
        ),
        "evaluate_second_over_first_after": round(
            evaluate["after"]["second"]["wall_s"] / evaluate["after"]["first"]["wall_s"], 3
        ),
        "evaluate_second_after_over_before": round(
            evaluate["after"]["second"]["wall_s"] / evaluate["before"]["second"]["wall_s"], 3
        ),
    }


def read_goals(ratios: dict[str, float]) -> dict[str, bool]:
    """The goals read off the ratios: a second start (and its check) at most 10 % of the first."""
    return {
        "second_start_at_most_10_percent_of_first": ratios["train_second_over_first_after"] <= 0.10,
        "second_check_at_most_10_percent_of_first": ratios["train_check_second_over_first_after"] <= 0.10,
    }


def export_baseline(ref: str, target: Path) -> Path:
    """The ``medvol`` package of git ref ``ref``, exported into ``target``."""
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref, "medvol"], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def baseline_commit(ref: str) -> str:
    """The short commit hash ``ref`` names."""
    done = subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 generated cases, no hippocampus")
    parser.add_argument("--cases", type=int, help="generated cases (default 2000; --quick 200)")
    parser.add_argument("--touch", type=int, default=20, help="images touched before the third start")
    parser.add_argument(
        "--scored", type=int, default=20, help="cases evaluate scores (of nnU-Net fold 0's val; default 20)"
    )
    parser.add_argument("--baseline", default="main", help="git ref measured as 'before' (default main)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared real data")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    started = time.perf_counter()
    count = args.cases or (200 if args.quick else 2000)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as temporary:
        work = Path(temporary)
        sources = {"before": export_baseline(args.baseline, work / "before"), "after": REPO}
        log(f"generating {count} cases")
        generated = generate_dataset(work / "generated", count)
        datasets = {
            "generated": bench_dataset(
                "generated", generated, [16, 16, 16], sources, work, args.touch, args.scored
            )
        }
        hippocampus = args.data / "msd-hippocampus"
        if args.quick or not hippocampus.is_dir():
            log(f"skipping the hippocampus ({'--quick' if args.quick else f'{hippocampus} not found'})")
        else:  # a copy (times kept): touching files must not change the shared data
            copy = shutil.copytree(hippocampus, work / "msd-hippocampus")
            datasets["hippocampus"] = bench_dataset(
                "hippocampus", copy, [32, 48, 32], sources, work, args.touch, args.scored
            )
    goals = {name: read_goals(result["ratios"]) for name, result in datasets.items()}
    fields = {
        "baseline": f"{args.baseline} ({baseline_commit(args.baseline)})",
        "environment": environment(),
        "datasets": datasets,
        "goals": goals,
    }
    finish_report(fields, started, args.out)


if __name__ == "__main__":
    main()
