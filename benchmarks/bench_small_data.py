"""Small labelled sets: which method helps most? Baseline against mixing, synthetic data and pretraining.

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_small_data.py --plan                # print the subsets, train nothing
    .venv/bin/python benchmarks/bench_small_data.py --quick               # smoke test, one tiny cell
    .venv/bin/python benchmarks/bench_small_data.py --out small.json      # the whole protocol (hours)
    .venv/bin/python benchmarks/bench_small_data.py --only hippocampus --setting hippo_sizes=[5] \\
        --setting 'hippo_arms=[baseline, genesis]' --out cell.json      # one cell
    .venv/bin/python benchmarks/bench_small_data.py --only hippocampus --work WORK \
        --held-out baseline,carvemix --out final.json                    # then the one held-out look
    .venv/bin/python benchmarks/bench_small_data.py --tables final.json  # the Markdown tables

The protocol (``docs/small-data.md``):

1. **Hippocampus** (MSD Task04, the 260 clean cases). The field's split: fold 0
   of 5 of the sorted clean ids (``nnunet_folds``). The fold-0 *training*
   cases are shuffled with seed 0: the first ``hippo_selection`` (20) are the
   **selection set**, on which every run is scored; the next N are the
   labelled training set, N in ``hippo_sizes`` (5, 10, 20; nested). The
   fold-0 training cases outside the selection set are the **unlabelled**
   pool of self-supervised pretraining (their images only). Fold 0's
   validation cases are never read by this script: they are for the one
   final evaluation of the configuration chosen here.
2. **AdrenalMNIST3D 28³**: stratified fractions (``adrenal_fractions``: 5, 10,
   25%; nested, seed 0) of the official training set; scored on the official
   validation set (the selection set); the official test split is never read
   (the files written here hold a one-volume placeholder). Pretraining sees
   every official training volume with its label withheld (set to 0).

Methods (arms), each trained with ``medvol train`` for the same number of
optimizer steps in every arm of a task, validated once at the end:

- ``baseline``: the real cases, the default on-line augmentation (``augment: {}``);
- ``carvemix`` (segmentation) / ``mixup``, ``cutmix`` (classification):
  the baseline plus ``augment.mix``;
- ``synthetic`` (segmentation): the baseline's cases plus
  ``hippo_synthetic_per_case`` labels-to-image variants of each
  (``medvol synthesize``), mixed in;
- ``synthetic-pretrain`` (segmentation): a run on
  ``hippo_synthetic_pretrain_per_case`` labels-to-image variants of each
  case only (no real image), then the baseline from ``model.init`` on its
  last checkpoint;
- ``genesis``: ``medvol pretrain`` on the unlabelled pool (restoration of
  Models-Genesis distortions), then the baseline from ``model.init``;
- ``medicalnet`` (classification, only with ``--medicalnet PATH``): a
  ``dilated`` 3D ResNet with MedicalNet's stem, from the file, against the
  same network from scratch (``medicalnet-scratch``).

``--held-out ARM,ARM`` (hippocampus): after the selection runs, the final
checkpoints of the named arms (the baseline and the method the selection set
chose) are scored on fold 0's validation cases with ``medvol evaluate
--cases``, once: an evaluation already in ``--work`` is read back, not
computed again, and ``held-out-looks.json`` counts every evaluation computed.

Statistics: per arm, mean and 95% t-interval over seeds; per method, the
seed-paired difference from its control (``baseline``, or
``medicalnet-scratch``) with its 95% t-interval. Every run's CPU time
(user + system of its subprocesses) is recorded against ``cpu_budget_s``.
The JSON report goes to stdout (and ``--out``); progress lines to stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from bench_synthetic import (
    bootstrap_difference,
    completed,
    environment,
    epochs_for,
    final_metrics,
    link,
    log,
    run_training,
    t_interval,
)
from common import command_line, stdout_to_stderr, write_report

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPLIT_SEED = 0
COST_FILE = "bench-cost.json"  # a run's wall and CPU seconds, kept in its folder
CONTROLS = {"medicalnet": "medicalnet-scratch"}  # any other method is compared with "baseline"


@dataclass(frozen=True)
class Settings:
    """Everything that defines the experiment (recorded in the report)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    cpu_budget_s: float = 600.0
    lr_drop_at: float = 0.8  # learning rate × 0.1 after this share of the steps
    # hippocampus
    hippo_sizes: tuple[int, ...] = (5, 10, 20)
    hippo_selection: int = 20
    hippo_unlabelled: int | None = None  # pretrain on the first N unlabelled cases only (None: all)
    hippo_arms: tuple[str, ...] = ("baseline", "carvemix", "synthetic", "synthetic-pretrain", "genesis")
    hippo_steps: int = 1500
    hippo_pretrain_steps: int = 1500
    hippo_batch: int = 2
    hippo_patch: int = 32
    hippo_base_filters: int = 16
    hippo_levels: int = 4
    hippo_lr: float = 3e-3
    hippo_synthetic_per_case: int = 1
    hippo_synthetic_pretrain_per_case: int = 5
    carve_prob: float = 0.5
    # AdrenalMNIST3D
    adrenal_fractions: tuple[float, ...] = (0.05, 0.10, 0.25)
    adrenal_arms: tuple[str, ...] = ("baseline", "mixup", "cutmix", "genesis")
    adrenal_steps: int = 210
    adrenal_pretrain_steps: int = 210
    adrenal_unlabelled: int | None = None  # pretrain on the first N training volumes only (None: all)
    adrenal_batch: int = 17
    adrenal_width: int = 8
    adrenal_lr: float = 1e-3
    mix_prob: float = 0.5
    mixup_alpha: float = 0.4
    cutmix_alpha: float = 1.0


QUICK = Settings(
    seeds=(0,),
    hippo_sizes=(5,),
    hippo_selection=4,
    hippo_unlabelled=8,
    hippo_arms=("baseline", "carvemix", "genesis"),
    hippo_steps=10,
    hippo_pretrain_steps=10,
    hippo_base_filters=4,
    hippo_levels=3,
    adrenal_fractions=(0.05,),
    adrenal_arms=("baseline", "mixup", "genesis"),
    adrenal_steps=6,
    adrenal_pretrain_steps=6,
    adrenal_unlabelled=64,
)


# --- the subsets ---------------------------------------------------------------------------------------


def draw_hippocampus(clean_ids: list[str], sizes: tuple[int, ...], selection: int) -> dict[str, Any]:
    """Fold 0 of the sorted clean ids; its training cases shuffled with ``SPLIT_SEED``: the first
    ``selection`` select, the next ``max(sizes)`` train (nested), all but the selection pretrain."""
    from medvol.data import nnunet_folds

    fold = nnunet_folds(sorted(clean_ids))[0]
    order = np.random.default_rng(SPLIT_SEED).permutation(len(fold["train"]))
    shuffled = [fold["train"][i] for i in order]
    chosen = shuffled[:selection]
    pools = {n: shuffled[selection : selection + n] for n in sizes}
    unlabelled = sorted(shuffled[selection:])
    assert not set(chosen) & set(shuffled[selection:]) and not set(shuffled) & set(fold["val"])
    return {
        "selection": sorted(chosen),
        "pools": pools,
        "unlabelled": unlabelled,
        "fold0_val_unread": fold["val"],
    }


def draw_adrenal(labels: np.ndarray, fractions: tuple[float, ...]) -> dict[float, np.ndarray]:
    """Stratified, nested subsets: per class one permutation (``SPLIT_SEED``), its first
    ``round(fraction × count)`` indices."""
    rng = np.random.default_rng(SPLIT_SEED)
    orders = {c: rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    return {
        f: np.sort(np.concatenate([order[: round(f * order.size)] for order in orders.values()]))
        for f in fractions
    }


# --- running medvol ------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train_cell(config: dict[str, Any], work: Path, threads: int) -> dict[str, Any]:
    """``medvol train`` one run; its final validation metrics, wall and CPU seconds.

    The costs are kept in the run folder (``COST_FILE``), so that a run reused from ``--work``
    reports what it cost when it was trained.
    """
    before, started = cpu_seconds(), time.perf_counter()
    name = config["tracking"]["name"]
    (work / "configs").mkdir(parents=True, exist_ok=True)
    run_dir = Path(config["tracking"]["output_dir"]) / name
    reused = completed(run_dir, config)
    run_dir = run_training(config, work / "configs" / f"{name}.yaml", threads)
    cost = run_cost(run_dir, reused, before, started)
    return {"name": name, "final": final_metrics(run_dir), **cost, "reused": reused}


def run_cost(run_dir: Path, reused: bool, cpu_before: float, started: float) -> dict[str, Any]:
    """A run's wall and CPU seconds: measured since ``started`` and kept in ``COST_FILE``; or, for a
    run made by an earlier invocation (``reused``), what that file recorded (unknown without it)."""
    if reused:
        recorded = run_dir / COST_FILE
        return dict(json.loads(recorded.read_text())) if recorded.is_file() else {"cpu_seconds": None}
    cost = {
        "wall_seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(cpu_seconds() - cpu_before, 1),
        "load_average": os.getloadavg(),
    }
    (run_dir / COST_FILE).write_text(json.dumps(cost))
    return cost


def pretrain_cell(config: dict[str, Any], work: Path) -> tuple[Path, dict[str, Any]]:
    """``medvol pretrain`` once (reused from ``--work``); the checkpoint and its costs."""
    name = config["tracking"]["name"]
    run_dir = Path(config["tracking"]["output_dir"]) / name
    checkpoint = run_dir / "checkpoints" / "pretrained.pt"
    path = work / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    before, started = cpu_seconds(), time.perf_counter()
    reused = checkpoint.is_file()
    if not reused:
        result = subprocess.run(
            [sys.executable, "-m", "medvol", "pretrain", str(path)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"medvol pretrain failed for {path}:\n{result.stderr[-2000:]}")
    spent = run_cost(run_dir, reused, before, started)
    history = json.loads((run_dir / "pretrain.json").read_text())["history"]
    cost = {
        "name": name,
        "steps": sum(h["steps"] for h in history),
        "first_loss": history[0]["loss"],
        "last_loss": history[-1]["loss"],
        **spent,
    }
    log(f"pretrained {name}: loss {cost['first_loss']:.4f} → {cost['last_loss']:.4f}")
    return checkpoint, cost


def schedule_config(config: dict[str, Any], schedule: dict[str, Any]) -> None:
    """One validation at the end, the learning-rate drop at the same step in every arm."""
    config["schedule"] = {"name": "multistep", "milestones": [schedule["milestone_epoch"]], "gamma": 0.1}
    config["train"].update({"epochs": schedule["epochs"], "val_every": schedule["epochs"], "device": "cpu"})


# --- hippocampus -------------------------------------------------------------------------------------


def hippocampus(
    settings: Settings, data_root: Path, work: Path, threads: int, held_out: tuple[str, ...] = ()
) -> dict[str, Any]:
    from medvol import demo
    from medvol.augment import synthesize_cases
    from medvol.data import save_folds, validate

    usable = {case.case_id: case for case in validate(data_root / "msd-hippocampus").usable}
    subsets = draw_hippocampus(list(usable), settings.hippo_sizes, settings.hippo_selection)
    selection = subsets["selection"]

    def folder(name: str, train_ids: list[str], extra: Sequence[tuple[Path, Path]] = ()) -> dict[str, Any]:
        """A dataset of symlinks (training cases, synthetic pairs, the selection set) and its split."""
        root = work / "datasets" / name
        for case_id in [*train_ids, *selection]:
            case = usable[case_id]
            assert case.label is not None
            link(case.images[0], root / "images" / case.images[0].name)
            link(case.label, root / "labels" / case.label.name)
        for image, label in extra:
            link(image, root / "images" / image.name)
            link(label, root / "labels" / label.name)
        ids = [*train_ids, *(image.name.removesuffix(".nii.gz") for image, _ in extra)]
        split = save_folds([{"train": ids, "val": selection}], work / "splits" / f"{name}.json")
        return {"root": root, "split": {"method": "file", "file": str(split), "fold": 0}, "cases": len(ids)}

    def synthetic_pairs(pool: list[str], per_case: int, seed: int) -> list[tuple[Path, Path]]:
        """``per_case`` labels-to-image variants of each pool case (``medvol synthesize``): (image, label)."""
        out = work / "synthetic" / f"x{per_case}-seed{seed}"
        cases = [(usable[c].images, usable[c].label) for c in pool]
        report = synthesize_cases(cases, per_case, out, seed, "labels-to-image")  # type: ignore[arg-type]
        if report.errors:
            raise RuntimeError(f"synthesis failed: {report.errors}")
        names = [f"{c}_syn{k:03d}.nii.gz" for c in pool for k in range(per_case)]
        return [(out / "images" / n, out / "labels" / n) for n in names]

    def segmenter(data: dict[str, Any], name: str, seed: int, steps: int) -> dict[str, Any]:
        config = demo.hippocampus_segmenter(
            data["root"],
            epochs=1,
            output_dir=work / "runs",
            name=name,
            base_filters=settings.hippo_base_filters,
            num_levels=settings.hippo_levels,
            patch_size=[settings.hippo_patch] * 3,
            split=data["split"],
            batch_size=settings.hippo_batch,
            lr=settings.hippo_lr,
            seed=seed,
        )
        config["data"]["cache_dir"] = str(work / "cache")
        config["augment"] = {}
        schedule_config(config, epochs_for(steps, data["cases"], settings.hippo_batch, settings.lr_drop_at))
        return config

    runs, pretraining = [], []
    for seed in settings.seeds:
        checkpoint = None
        if "genesis" in settings.hippo_arms:
            data = folder("unlabelled", subsets["unlabelled"][: settings.hippo_unlabelled])
            config = segmenter(data, f"hippo-pretrain-seed{seed}", seed, settings.hippo_pretrain_steps)
            checkpoint, cost = pretrain_cell(config, work)
            pretraining.append({"seed": seed, **cost})
        for size in settings.hippo_sizes:
            pool = subsets["pools"][size]
            for arm in settings.hippo_arms:
                name = f"hippo-{size}-{arm}-seed{seed}"
                extra: list[tuple[Path, Path]] = []
                if arm == "synthetic":
                    extra = synthetic_pairs(pool, settings.hippo_synthetic_per_case, seed)
                if arm == "synthetic-pretrain":  # trained on synthetic pairs only, then fine-tuned
                    synthetic = folder(
                        f"{name}-synthetic",
                        [],
                        synthetic_pairs(pool, settings.hippo_synthetic_pretrain_per_case, seed),
                    )
                    first = train_cell(
                        segmenter(synthetic, f"{name}-synthetic", seed, settings.hippo_steps), work, threads
                    )
                    pretraining.append({"seed": seed, "size": size, **first})
                data = folder(name, pool, extra)
                config = segmenter(data, name, seed, settings.hippo_steps)
                if arm == "carvemix":
                    config["augment"] = {"mix": "carvemix", "mix_prob": settings.carve_prob}
                if arm == "genesis":
                    config["model"]["init"] = str(checkpoint)
                if arm == "synthetic-pretrain":
                    config["model"]["init"] = str(work / "runs" / first["name"] / "checkpoints" / "last.pt")
                runs.append({"size": size, "arm": arm, "seed": seed, **train_cell(config, work, threads)})
                log(f"{name}: selection Dice {runs[-1]['final']['val_dice']:.4f}")
    report = {
        "subsets": {
            "selection": selection,
            "pools": {str(n): ids for n, ids in subsets["pools"].items()},
            "unlabelled_cases": len(subsets["unlabelled"]),
            "scored_on": "the selection set (fold-0 training cases); fold 0's validation cases were not read",
        },
        "pretraining": pretraining,
        "runs": runs,
        "summary": summarise(runs, "size", "val_dice", settings.hippo_sizes, settings.hippo_arms, settings),
    }
    if held_out:
        cases = [usable[c] for c in subsets["fold0_val_unread"]]
        report["subsets"]["scored_on"] += f"; then the arms {', '.join(held_out)} on them, once"
        report["held_out"] = score_held_out(runs, held_out, cases, settings, work, threads)
    return report


def score_held_out(
    runs: list[dict[str, Any]],
    arms: tuple[str, ...],
    cases: list[Any],
    settings: Settings,
    work: Path,
    threads: int,
) -> dict[str, Any]:
    """Each chosen arm's final checkpoints scored once on fold 0's validation cases.

    Per size: each arm's mean case Dice (mean over the two classes) with its
    t-interval over seeds, the seed-paired difference from the baseline, and
    a paired bootstrap over cases of that difference (seeds kept).
    """
    root = work / "datasets" / "fold0-val"
    for case in cases:
        link(case.images[0], root / "images" / case.images[0].name)
        link(case.label, root / "labels" / case.label.name)
    manifest = work / "datasets" / "fold0-val.csv"
    if not manifest.is_file():
        medvol_command(["index", str(root), "--out", str(manifest), "--classes", "0,1,2"], threads)
    looks_path = work / "held-out-looks.json"
    looks: dict[str, int] = json.loads(looks_path.read_text()) if looks_path.is_file() else {}
    per_case: dict[tuple[int, str], dict[int, dict[str, float]]] = {}
    for run in runs:
        if run["arm"] not in arms:
            continue
        out = work / "held-out" / run["name"]
        if not (out / "cases.csv").is_file():
            run_dir = work / "runs" / run["name"]
            evaluate = ["evaluate", str(run_dir), "--cases", str(manifest), "--checkpoint", "last"]
            medvol_command([*evaluate, "--out", str(out)], threads)
            looks[run["name"]] = looks.get(run["name"], 0) + 1
            looks_path.write_text(json.dumps(looks, indent=1))
        per_case.setdefault((run["size"], run["arm"]), {})[run["seed"]] = case_mean_dice(out / "cases.csv")
    summary: dict[str, Any] = {"looks": looks, "cases": len(cases)}
    for size in settings.hippo_sizes:
        scored = {arm: per_case.get((size, arm), {}) for arm in arms}
        part: dict[str, Any] = {
            arm: t_interval([float(np.mean(list(d.values()))) for d in scored[arm].values()]) for arm in arms
        }
        control = scored.get("baseline", {})
        for arm in arms:
            seeds = sorted(set(scored[arm]) & set(control))
            if arm == "baseline" or not seeds:
                continue
            ids = sorted(control[seeds[0]])
            treated = np.array([[scored[arm][s][c] for c in ids] for s in seeds])
            baseline = np.array([[control[s][c] for c in ids] for s in seeds])
            part[f"{arm} minus baseline"] = {
                "over_seeds": t_interval(list(treated.mean(axis=1) - baseline.mean(axis=1))),
                "paired_bootstrap_over_cases": bootstrap_difference(treated, baseline, np.mean),
            }
        summary[str(size)] = part
    return summary


def case_mean_dice(cases_csv: Path) -> dict[str, float]:
    """Per case, the mean Dice over its classes (``medvol evaluate``'s ``cases.csv``)."""
    per_class: dict[str, list[float]] = {}
    with open(cases_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            per_class.setdefault(row["case_id"], []).append(float(row["dice"]))
    return {case: float(np.mean(values)) for case, values in per_class.items()}


def medvol_command(arguments: list[str], threads: int) -> None:
    """``medvol ARGUMENTS`` in a subprocess; raises with its error output when it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    result = subprocess.run(
        [sys.executable, "-m", "medvol", *arguments], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise RuntimeError(f"medvol {' '.join(arguments)} failed:\n{result.stderr[-2000:]}")


# --- AdrenalMNIST3D ----------------------------------------------------------------------------------


def adrenal(
    settings: Settings, data_root: Path, work: Path, threads: int, medicalnet: Path | None
) -> dict[str, Any]:
    from medvol import demo

    arrays = np.load(data_root / "adrenalmnist3d" / "adrenalmnist3d.npz")
    images, labels = arrays["train_images"], arrays["train_labels"]
    subsets = draw_adrenal(labels[:, 0], settings.adrenal_fractions)
    keep = {"val_images": arrays["val_images"], "val_labels": arrays["val_labels"]}
    # the official test split is never read: medvol's loader wants one, so one zero volume stands in
    keep |= {
        "test_images": np.zeros((1, *images.shape[1:]), np.uint8),
        "test_labels": np.zeros((1, 1), np.uint8),
    }
    (work / "adrenal").mkdir(parents=True, exist_ok=True)

    def npz(name: str, train_images: np.ndarray, train_labels: np.ndarray) -> Path:
        path = work / "adrenal" / f"{name}.npz"
        np.savez(path, train_images=train_images, train_labels=train_labels, **keep)
        return path

    def classifier(path: Path, name: str, seed: int, steps: int, arm: str) -> dict[str, Any]:
        options: dict[str, Any] = {"widths": settings.adrenal_width, "stem_stride": 1}  # the 28³ stem
        if arm.startswith("medicalnet"):  # MedicalNet's network: 7³ stem, max-pool, widths 64, dilated
            options = {"widths": 64, "stem_kernel": 7, "stem_stride": 2, "stem_pool": True, "dilated": True}
        widths = options.pop("widths")
        config = demo.medmnist_classifier(
            path,
            epochs=1,
            output_dir=work / "runs",
            name=name,
            widths=widths,
            batch_size=settings.adrenal_batch,
            lr=settings.adrenal_lr,
            seed=seed,
            **options,
        )
        config["augment"] = {}
        cases = int(np.load(path)["train_labels"].shape[0])
        schedule_config(config, epochs_for(steps, cases, settings.adrenal_batch, settings.lr_drop_at))
        return config

    pool = slice(settings.adrenal_unlabelled)
    unlabelled = npz("unlabelled", images[pool], np.zeros_like(labels[pool]))  # training volumes, no label
    runs, pretraining = [], []
    arms = list(settings.adrenal_arms) + (["medicalnet-scratch", "medicalnet"] if medicalnet else [])
    for seed in settings.seeds:
        checkpoint = None
        if "genesis" in arms:
            config = classifier(
                unlabelled, f"adrenal-pretrain-seed{seed}", seed, settings.adrenal_pretrain_steps, ""
            )
            checkpoint, cost = pretrain_cell(config, work)
            pretraining.append({"seed": seed, **cost})
        for fraction in settings.adrenal_fractions:
            path = npz(f"train-{fraction:g}", images[subsets[fraction]], labels[subsets[fraction]])
            for arm in arms:
                name = f"adrenal-{fraction:g}-{arm}-seed{seed}"
                config = classifier(path, name, seed, settings.adrenal_steps, arm)
                if arm in ("mixup", "cutmix"):
                    alpha = settings.mixup_alpha if arm == "mixup" else settings.cutmix_alpha
                    config["augment"] = {"mix": arm, "mix_prob": settings.mix_prob, "mix_alpha": alpha}
                if arm == "genesis":
                    config["model"]["init"] = str(checkpoint)
                if arm == "medicalnet":
                    config["model"]["init"] = str(medicalnet)
                runs.append(
                    {"fraction": fraction, "arm": arm, "seed": seed, **train_cell(config, work, threads)}
                )
                log(f"{name}: validation AUC {runs[-1]['final']['val_auc']:.4f}")
    return {
        "subsets": {
            f"{f:g}": {"cases": int(idx.size), "class_counts": np.bincount(labels[idx, 0]).tolist()}
            for f, idx in subsets.items()
        },
        "scored_on": "the official validation set (98 cases); the test split was not read",
        "pretraining": pretraining,
        "runs": runs,
        "summary": summarise(runs, "fraction", "val_auc", settings.adrenal_fractions, tuple(arms), settings),
    }


# --- statistics ----------------------------------------------------------------------------------------


def summarise(
    runs: list[dict[str, Any]],
    by: str,
    metric: str,
    cells: tuple[Any, ...],
    arms: tuple[str, ...],
    settings: Settings,
) -> dict[str, Any]:
    """Per cell: each arm's mean and t-interval over seeds, and each method's seed-paired difference
    from its control; the runs over the CPU budget are named."""
    summary: dict[str, Any] = {}
    for cell in cells:
        mine = {arm: {r["seed"]: r for r in runs if r[by] == cell and r["arm"] == arm} for arm in arms}
        part: dict[str, Any] = {
            arm: t_interval([r["final"][metric] for r in mine[arm].values()]) for arm in arms
        }
        for arm in arms:
            control = CONTROLS.get(arm, "baseline")
            if arm == control or control not in mine or arm.endswith("scratch"):
                continue
            seeds = sorted(set(mine[arm]) & set(mine[control]))
            paired = [mine[arm][s]["final"][metric] - mine[control][s]["final"][metric] for s in seeds]
            part[f"{arm} minus {control}"] = t_interval(paired)
        part["over_cpu_budget"] = [
            r["name"]
            for arm in arms
            for r in mine[arm].values()
            if (r["cpu_seconds"] or 0) > settings.cpu_budget_s
        ]
        summary[str(cell)] = part
    return summary


# --- the tables of docs/small-data.md -------------------------------------------------------------------


def markdown_tables(report: dict[str, Any]) -> str:
    """The Markdown tables of a report: per task, cell and arm, the mean [95% t-interval] over seeds
    and the seed-paired difference from the control; the held-out scoring, if any."""
    parts = []
    for task, metric in (("hippocampus", "selection-set Dice"), ("adrenal", "validation AUC")):
        if task in report:
            parts.append(_cell_table(report[task]["summary"], metric, task))
    held_out = report.get("hippocampus", {}).get("held_out")
    if held_out:
        parts.append(_held_out_table(held_out))
    return "\n\n".join(parts) + "\n"


def _cell_table(summary: dict[str, Any], metric: str, task: str) -> str:
    cells = list(summary)
    header = "N =" if task == "hippocampus" else "fraction"
    lines = [
        f"| arm ({metric}) | " + " | ".join(f"{header} {c}" for c in cells) + " |",
        "|---|" + "---|" * len(cells),
    ]
    arms = [k for k in summary[cells[0]] if k != "over_cpu_budget" and " minus " not in k]
    for arm in arms:
        row = []
        for cell in cells:
            entry, paired = summary[cell].get(arm), summary[cell].get(f"{arm} minus baseline")
            text = _mean_ci(entry)
            if paired:
                text += f"; paired {_mean_ci(paired, signed=True)}"
            row.append(text)
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _held_out_table(held_out: dict[str, Any]) -> str:
    sizes = [k for k in held_out if k not in ("looks", "cases")]
    lines = [
        f"| N | arm | Dice on the {held_out['cases']} held-out cases | paired difference over seeds "
        "| paired bootstrap over cases |",
        "|---|---|---|---|---|",
    ]
    for size in sizes:
        for arm, entry in held_out[size].items():
            if " minus " in arm:
                continue
            paired = held_out[size].get(f"{arm} minus baseline")
            seeds = _mean_ci(paired["over_seeds"], signed=True) if paired else "—"
            cases = "—"
            if paired:
                boot = paired["paired_bootstrap_over_cases"]
                cases = f"{boot['difference']:+.4f} [{boot['ci95'][0]:+.4f}, {boot['ci95'][1]:+.4f}]"
            lines.append(f"| {size} | {arm} | {_mean_ci(entry)} | {seeds} | {cases} |")
    return "\n".join(lines)


def _mean_ci(entry: dict[str, Any] | None, signed: bool = False) -> str:
    if not entry:
        return "—"
    form = "{:+.4f}" if signed else "{:.4f}"
    if entry.get("ci95") is None:
        return form.format(entry["mean"]) + f" ({entry['n']} seed)"
    low, high = entry["ci95"]
    return f"{form.format(entry['mean'])} [{form.format(low)}, {form.format(high)}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: one seed, one tiny cell per task")
    parser.add_argument("--plan", action="store_true", help="print the subsets as JSON and train nothing")
    parser.add_argument(
        "--tables",
        type=Path,
        metavar="REPORT",
        help="print a JSON report's Markdown tables; train nothing",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared real data folder")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--work", type=Path, help="keep runs and datasets here (finished runs are reused)")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads per run (runs go one at a time)"
    )
    parser.add_argument("--only", choices=["hippocampus", "adrenal"], help="run one of the two tasks")
    parser.add_argument(
        "--held-out",
        default="",
        metavar="ARM,ARM",
        help="hippocampus: score these arms' final runs once on fold 0's validation cases",
    )
    parser.add_argument(
        "--medicalnet", type=Path, help="a MedicalNet resnet_10.pth: adds the medicalnet arms"
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a Settings field (YAML)",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    for item in args.setting:
        name, _, text = item.partition("=")
        if name not in Settings.__dataclass_fields__:
            raise SystemExit(f"unknown setting {name!r}; known: {', '.join(Settings.__dataclass_fields__)}")
        value = yaml.safe_load(text)
        settings = replace(settings, **{name: tuple(value) if isinstance(value, list) else value})
    if args.tables:
        print(markdown_tables(json.loads(args.tables.read_text())), end="")
        return 0
    if args.plan:
        from medvol.data import validate

        with stdout_to_stderr():
            clean = [case.case_id for case in validate(args.data / "msd-hippocampus").usable]
        labels = np.load(args.data / "adrenalmnist3d" / "adrenalmnist3d.npz")["train_labels"][:, 0]
        plan = {
            "hippocampus": draw_hippocampus(clean, settings.hippo_sizes, settings.hippo_selection),
            "adrenal": {
                f"{f:g}": idx.tolist() for f, idx in draw_adrenal(labels, settings.adrenal_fractions).items()
            },
        }
        print(json.dumps(plan, indent=1, default=str))
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_small_data-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {
            "benchmark": "small labelled sets: baseline vs mixing, synthetic data, pretraining",
            "command": command_line(),
            "quick": args.quick,
            "settings": asdict(settings),
            "environment": environment(),
        }
        with stdout_to_stderr():  # medvol's progress lines; the report alone goes to stdout
            if args.only in (None, "hippocampus"):
                held_out = tuple(arm for arm in args.held_out.split(",") if arm)
                report["hippocampus"] = hippocampus(settings, args.data, work, args.threads, held_out)
            if args.only in (None, "adrenal"):
                report["adrenal"] = adrenal(settings, args.data, work, args.threads, args.medicalnet)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
