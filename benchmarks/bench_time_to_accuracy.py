"""Time to accuracy: whole runs of a recipe before and after taking augmentation off the critical path.

For each seed, a CPU recipe is trained to the end twice, exactly as the recipe says (its epochs,
validation schedule, TensorBoard on), on its official split:

- ``--case adrenalmnist3d`` (default): ``medvol/studies/recipes/adrenalmnist3d-resnet18-cpu.yaml``;
- ``--case hippocampus``: ``medvol/studies/recipes/hippocampus-unet-cpu.yaml``, nnU-Net fold 0.

The two runs of a seed:

- ``sample``: augmentation per sample in the loader and no prefetch thread
  (``augment.where: sample``, ``data.prefetch: false``): the path before the change;
- ``default``: the recipe as shipped (batched augmentation in the training thread; batches read
  ahead by the prefetch thread unless the recipe turns it off, as the hippocampus recipe has done
  since its session-11 measurement).

They follow each other, in alternating order from seed to seed, so the drift of a shared machine
falls on both alike; compare the ratio within a seed. Reported per run: wall time of ``medvol
train``, training time (sum of epoch times), median samples/s and data-wait share, the best value
of the recipe's validation metric and its epoch, and every validation metric of the last validated
epoch (the last checkpoint). The JSON report goes to stdout (and ``--out``); progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from common import environment, finish_report, make_log, stdout_to_stderr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medvol.config import parse_config  # noqa: E402
from medvol.engine.train import train  # noqa: E402
from tests.shared_samples import write_adrenal_subset  # noqa: E402

log = make_log("bench_time_to_accuracy")
RECIPES = {
    "adrenalmnist3d": ROOT / "medvol" / "studies" / "recipes" / "adrenalmnist3d-resnet18-cpu.yaml",
    "hippocampus": ROOT / "medvol" / "studies" / "recipes" / "hippocampus-unet-cpu.yaml",
}
MODES = ("sample", "default")


def recipe(case: str, data: Path, work: Path, quick: bool) -> dict[str, Any]:
    """The case's recipe on its full official split (``--quick``: 2 epochs, fewer cases)."""
    config = yaml.safe_load(RECIPES[case].read_text())
    if case == "hippocampus":
        config["data"]["root"] = str(data / "msd-hippocampus")
        if quick:
            config["train"].update(epochs=2, val_every=1)
        return config
    full = data / "adrenalmnist3d" / "adrenalmnist3d.npz"
    counts = {"train": 64, "val": 32, "test": 8}
    config["data"]["root"] = str(
        write_adrenal_subset(data, work / "adrenal-quick.npz", counts) if quick else full
    )
    if quick:
        config["train"]["epochs"] = 2
    return config


def in_mode(config: dict[str, Any], mode: str, seed: int, work: Path) -> dict[str, Any]:
    """``config`` for one whole run of ``mode`` and ``seed``, written under ``work``."""
    out = json.loads(json.dumps(config))
    out["train"]["seed"] = seed
    out["tracking"] = {
        **out.get("tracking", {}),
        "output_dir": str(work / "runs"),
        "name": f"{mode}-seed{seed}",
    }
    if mode == "sample":
        out["augment"] = {**out["augment"], "where": "sample"}
        out["data"]["prefetch"] = False
    return out


def whole_run(config: dict[str, Any]) -> dict[str, Any]:
    """Train to the end; wall and training time, speed, and the validation metrics."""
    metric = f"val_{config['train']['metric']}"
    started = time.perf_counter()
    with stdout_to_stderr():
        run_dir = train(parse_config(config))
    wall = time.perf_counter() - started
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    scored = [e for e in epochs if e.get(metric) is not None]
    best = max(scored, key=lambda e: e[metric]) if scored else {}
    last = scored[-1] if scored else {}
    return {
        "wall_s": round(wall, 1),
        "train_s": round(sum(e["seconds"] for e in epochs), 1),
        "epochs": len(epochs),
        "median_samples_per_s": round(statistics.median(e["samples_per_s"] for e in epochs), 1),
        "median_data_wait_share": statistics.median(e["data_wait_share"] for e in epochs),
        f"best_{metric}": best.get(metric),
        "best_epoch": None if not best else best["epoch"] + 1,  # 1-based, as medvol logs it
        "last_validation": {k: v for k, v in last.items() if k.startswith("val_") and k != "val_cases"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(RECIPES), default="adrenalmnist3d")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0 .. N-1 (default 1)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 2 epochs (AdrenalMNIST3D: 64 cases)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-tta-") as folder:
        work = Path(folder)
        base = recipe(args.case, args.data, work, args.quick)
        runs = []
        for seed in range(args.seeds):
            for mode in MODES if seed % 2 == 0 else MODES[::-1]:
                log(f"seed {seed}, {mode}: training")
                runs.append({"seed": seed, "mode": mode, **whole_run(in_mode(base, mode, seed, work))})
                log(f"seed {seed}, {mode}: {runs[-1]}")
    ratios = []
    for seed in range(args.seeds):
        by_mode = {run["mode"]: run for run in runs if run["seed"] == seed}
        ratios.append(round(by_mode["sample"]["train_s"] / by_mode["default"]["train_s"], 3))
    report = {
        "case": args.case,
        "recipe": str(RECIPES[args.case].relative_to(ROOT)),
        "quick": args.quick,
        "runs": runs,
        "train_time_ratio_sample_over_default": ratios,
        "environment": environment(),
    }
    finish_report(report, started, args.out)


if __name__ == "__main__":
    main()
