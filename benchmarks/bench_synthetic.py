"""Does synthetic training data help? Real-only against real + synthetic, same steps, same held-out cases.

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_synthetic.py --quick            # smoke test, < 2 min
    .venv/bin/python benchmarks/bench_synthetic.py --out results.json  # full run, about 40 min on 2 cores

Two experiments, every arm trained with ``medvol train`` (a subprocess per run):

1. **Hippocampus segmentation** (MSD Task04, the 260 clean cases). Split: the
   nnU-Net fold 0 of the sorted clean ids. Held-out: the fold-0 validation
   cases (all 52 unless ``--heldout N``). Training pools: the fold-0 training
   ids shuffled with seed 0; the first 10 and the first 20 (the 10 are a
   subset of the 20). Arms per pool size: ``real`` (the real cases only),
   ``real+labels-to-image`` and ``real+augment`` (the real cases plus
   ``--per-case`` variants of each, written by
   ``medvol.augment.synthesize_cases`` with the default augmentation config,
   i.e. what ``medvol synthesize`` gives). Every run of a task takes the same
   number of optimizer steps whatever its number of cases (epochs are set so
   that epochs x steps-per-epoch is the same), validates once, at the end, on
   the held-out cases (``val_every`` = ``epochs``), and the final model is what
   is reported: nothing is selected on the held-out cases.
2. **AdrenalMNIST3D 28³ classification**. 10% of the official training set,
   stratified (per class, ``round(0.1 x count)`` cases drawn with seed 0);
   evaluation on the official validation set; the official test set is never
   read. Arms: ``real`` (no augmentation), ``real+augment`` (plus
   ``--per-case`` augmented copies of each training volume drawn with
   ``medvol.augment.build_augmenter`` and the default config), and
   ``real+online-augment`` (no copies, the same augmentation applied on the
   fly: the comparison that says whether fixed copies beat plain augmentation).

The training folders are built in a temporary work folder (flat ``images/`` +
``labels/`` of symlinks and synthetic files). They also link the held-out
cases, because ``medvol train`` validates on cases of its data root; the split
file (``data.split.method: file``) puts them on the validation side only, and
the script checks that no held-out case, and no variant of one, is on the
training side.

Besides the engine's validation metrics (``metrics.jsonl``), every final
checkpoint is rescored per case by a subprocess (``--score RUN_DIR``) with the
engine's own sliding-window inference; the per-case means must equal the
engine's figures (checked, reported as ``engine_check``). The per-case scores
give a paired bootstrap over held-out cases for the synthetic-minus-real
difference; the main intervals are t-intervals over training seeds.

``--dev`` replaces the held-out cases with fold-0 *training* cases outside the
pool (for trying settings without touching the held-out cases). The JSON report
goes to stdout (and ``--out``); progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from common import command_line, git_state, hardware, write_report

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HIPPO = Path("msd-hippocampus")
ADRENAL = Path("adrenalmnist3d") / "adrenalmnist3d.npz"
SPLIT_SEED = 0  # the shuffle of the fold-0 training ids and the AdrenalMNIST3D subset
BOOTSTRAP_RESAMPLES = 10_000


@dataclass(frozen=True)
class Settings:
    """Everything that defines the experiment (recorded in the report)."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    # hippocampus
    hippo_sizes: tuple[int, ...] = (10, 20)
    hippo_modes: tuple[str, ...] = ("labels-to-image", "augment")
    hippo_per_case: int = 5
    hippo_steps: int = 1500
    hippo_batch: int = 2
    hippo_patch: int = 32
    hippo_base_filters: int = 16
    hippo_levels: int = 4
    hippo_lr: float = 3e-3
    hippo_heldout: int | None = None  # None: all fold-0 validation cases
    # AdrenalMNIST3D
    adrenal_fraction: float = 0.1
    adrenal_arms: tuple[str, ...] = ("real", "real+augment", "real+online-augment")
    adrenal_per_case: int = 5
    adrenal_steps: int = 210
    adrenal_batch: int = 17
    adrenal_width: int = 8
    adrenal_lr: float = 1e-3
    # both: learning rate x 0.1 after this fraction of the steps (the same step in every arm)
    lr_drop_at: float = 0.8


QUICK = Settings(
    seeds=(0,),
    hippo_sizes=(10,),
    hippo_modes=("labels-to-image",),
    hippo_per_case=1,
    hippo_steps=20,
    hippo_heldout=4,
    adrenal_arms=("real", "real+augment"),
    adrenal_per_case=1,
    adrenal_steps=14,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- schedule: the same steps and the same learning-rate drop in every arm ---------------------------


def epochs_for(steps: int, cases: int, batch: int, drop_at: float) -> dict[str, Any]:
    """Epochs (and the multistep milestone) giving ``steps`` optimizer steps on ``cases`` cases.

    One epoch is ``cases // batch`` steps (the engine drops the last partial batch).
    Where ``steps`` is not a multiple of that, the nearest whole number of epochs
    is used and ``steps`` reports what was actually run.
    """
    per_epoch = cases // batch
    if per_epoch < 1:
        raise SystemExit(f"{cases} cases cannot fill a batch of {batch}")
    epochs = max(1, round(steps / per_epoch))
    milestone = max(1, round(drop_at * epochs))
    return {
        "epochs": epochs,
        "steps_per_epoch": per_epoch,
        "steps": epochs * per_epoch,
        "milestone_epoch": milestone,
        "lr_drop_step": milestone * per_epoch,
    }


# --- statistics ----------------------------------------------------------------------------------------


def t_interval(values: list[float]) -> dict[str, Any]:
    """Mean and 95% t-interval over seeds (no interval from one value)."""
    from scipy import stats

    array = np.asarray(values, dtype=float)
    mean = float(array.mean())
    if array.size < 2:
        return {"mean": mean, "ci95": None, "sd": None, "n": int(array.size), "values": array.tolist()}
    sd = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.975, array.size - 1) * sd / math.sqrt(array.size))
    return {
        "mean": mean,
        "ci95": [mean - half, mean + half],
        "sd": sd,
        "n": int(array.size),
        "values": array.tolist(),
    }


def bootstrap_difference(
    treated: np.ndarray, control: np.ndarray, statistic: Any, seed: int = 0
) -> dict[str, Any]:
    """Paired bootstrap over cases of ``statistic(treated) - statistic(control)``.

    ``treated`` and ``control`` are ``(seeds, cases, ...)``; a resample draws
    cases (the same ones for both arms) and keeps every seed.
    """
    rng = np.random.default_rng(seed)
    cases = treated.shape[1]
    observed = float(statistic(treated) - statistic(control))
    draws = np.empty(BOOTSTRAP_RESAMPLES)
    for i in range(BOOTSTRAP_RESAMPLES):
        pick = rng.integers(cases, size=cases)
        draws[i] = statistic(treated[:, pick]) - statistic(control[:, pick])
    draws = draws[~np.isnan(draws)]
    return {
        "difference": observed,
        "ci95": [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))],
        "resamples": int(draws.size),
    }


# --- running medvol ---------------------------------------------------------------------------------


def run_training(config: dict[str, Any], config_path: Path, threads: int) -> Path:
    """``medvol train CONFIG`` in a subprocess; returns the run folder."""
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    run_dir = Path(config["tracking"]["output_dir"]) / config["tracking"]["name"]
    if completed(run_dir, config):
        log(f"reusing the completed run {run_dir} (same config)")
        return run_dir
    if run_dir.exists():  # an interrupted or different run in this work folder: start it again
        shutil.rmtree(run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log_path = config_path.with_suffix(".log")
    started = time.perf_counter()
    with open(log_path, "w") as handle:
        result = subprocess.run(
            [sys.executable, "-m", "medvol", "train", str(config_path)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if result.returncode != 0:
        raise RuntimeError(
            f"medvol train failed for {config_path}; see {log_path}:\n{log_path.read_text()[-2000:]}"
        )
    log(f"trained {config['tracking']['name']} in {time.perf_counter() - started:.0f}s")
    return run_dir


def completed(run_dir: Path, config: dict[str, Any]) -> bool:
    """True when ``run_dir`` holds a finished run of exactly this config (``--work`` reruns)."""
    from medvol.config import load_config, parse_config

    try:
        same = load_config(run_dir / "config.yaml").model_dump() == parse_config(config).model_dump()
        final_metrics(run_dir)
    except Exception:
        return False
    return same and (run_dir / "checkpoints" / "last.pt").is_file()


def run_scoring(run_dir: Path, threads: int) -> list[dict[str, Any]]:
    """Per-case scores of a run's final checkpoint (``--score`` in a subprocess)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    result = subprocess.run(
        [sys.executable, __file__, "--score", str(run_dir)], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise RuntimeError(f"scoring {run_dir} failed:\n{result.stderr[-2000:]}")
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def score(run_dir: Path) -> list[dict[str, Any]]:
    """Rescore the final checkpoint of a run on its validation cases, case by case.

    Uses the engine's pieces (the run's task, ``predict_volume``,
    ``dice_per_class``) so that the per-case means equal the engine's metrics.
    """
    import torch

    from medvol.engine.checkpoint import load_checkpoint
    from medvol.engine.distributed import Runtime
    from medvol.engine.run_folder import RunFolder
    from medvol.engine.torch_network import TorchNetwork
    from medvol.engine.windows import predict_volume
    from medvol.metrics import dice_per_class
    from medvol.models import create_model
    from medvol.tasks import task_for

    run = RunFolder(run_dir)
    config = run.read_config()
    runtime = Runtime(device=torch.device("cpu"))
    task = task_for(config)
    data = task.build_data(runtime, run)
    model = create_model(config.model.name, **config.model.options)
    model.load_state_dict(load_checkpoint(run.checkpoint("last"))["model"])
    model.eval()
    rows = []
    with torch.no_grad():
        for index in range(len(data.val)):
            sample = data.val[index]
            image = sample["image"].unsqueeze(0)
            if task.output == "classification":
                probability = torch.softmax(model(image).float(), dim=1)[0, 1]
                rows.append(
                    {
                        "case_id": sample["case_id"],
                        "target": int(sample["label"]),
                        "p1": float(probability),
                    }
                )
                continue
            x, y, z = config.data.patch_size or image.shape[2:]
            network = TorchNetwork(model, torch.device("cpu"), nullcontext())
            prediction = predict_volume(network, image.numpy(), (x, y, z)).argmax(axis=1)[0]
            dice = dice_per_class(prediction, sample["label"][0].numpy(), range(1, config.data.num_classes))
            rows.append({"case_id": sample["case_id"], "dice": {str(k): v for k, v in dice.items()}})
    return rows


def final_metrics(run_dir: Path) -> dict[str, Any]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    validated = [r for r in records if any(k.startswith("val_") for k in r)]
    if len(validated) != 1 or validated[0] is not records[-1]:
        raise RuntimeError(f"{run_dir}: expected one validation, at the last epoch; got {len(validated)}")
    return records[-1]


# --- hippocampus ------------------------------------------------------------------------------------


def link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(source.resolve())


def hippocampus(settings: Settings, data_root: Path, work: Path, jobs: int, dev: bool) -> dict[str, Any]:
    from medvol import demo
    from medvol.augment import synthesize_cases
    from medvol.data import nnunet_folds, save_folds, validate

    root = data_root / HIPPO
    log(f"indexing {root}")
    report = validate(root)
    usable = {case.case_id: case for case in report.usable}
    ids = sorted(usable)
    fold = nnunet_folds(ids)[0]
    pool = [fold["train"][i] for i in np.random.default_rng(SPLIT_SEED).permutation(len(fold["train"]))]
    largest = max(settings.hippo_sizes)
    if dev:  # fold-0 training cases outside every pool: for trying settings, never for reporting
        heldout = sorted(pool[largest : largest + (settings.hippo_heldout or 20)])
    else:
        heldout = sorted(fold["val"])
        if settings.hippo_heldout is not None:
            heldout = heldout[: settings.hippo_heldout]
    assert not set(heldout) & set(pool[:largest])

    synthetic: dict[tuple[str, int], list[tuple[str, Path, Path]]] = {}
    synthesis_log: dict[str, Any] = {}
    for mode in settings.hippo_modes:
        for seed in settings.seeds:
            out = work / "synthetic" / f"{mode}-seed{seed}"
            cases = [(usable[c].images, usable[c].label) for c in pool[:largest]]
            started = time.perf_counter()
            result = synthesize_cases(cases, settings.hippo_per_case, out, seed, mode)  # type: ignore[arg-type]
            if result.errors:
                raise RuntimeError(f"synthesis failed: {result.errors}")
            seconds = time.perf_counter() - started
            log(f"synthesized {len(result.written)} {mode} variants (seed {seed}) in {seconds:.0f}s")
            with open(result.manifest or out / "manifest.csv", newline="") as handle:
                rows = list(csv.DictReader(handle))
            # medvol's validation rejects a case whose image bytes equal another's, and the
            # augment mode writes byte-identical variants of a case when no random stage fires
            # (see docs/synthetic-data.md); such repeats are dropped here, or `medvol train` refuses
            # the split. Dropping a repeat only changes how often that one image is drawn.
            duplicates = sorted(validate(out, classes=[0, 1, 2]).unusable_ids)
            synthesis_log[f"{mode}-seed{seed}"] = {
                "variants": len(rows),
                "dropped_byte_identical_repeats": duplicates,
            }
            if duplicates:
                log(f"  dropped {len(duplicates)} byte-identical repeated variants: {duplicates}")
            synthetic[(mode, seed)] = [
                (Path(row["image"]).name.removesuffix(".nii.gz"), out / row["image"], out / row["label"])
                for row in rows
                if Path(row["image"]).name.removesuffix(".nii.gz") not in duplicates
            ]
            for row in rows:  # a variant's source must be a pool case, never a held-out one
                assert row["case_id"] in pool[:largest] and row["case_id"] not in heldout

    arms = ["real", *(f"real+{mode}" for mode in settings.hippo_modes)]
    tasks = []
    for size in settings.hippo_sizes:
        train_real = pool[:size]
        for arm in arms:
            for seed in settings.seeds:
                name = f"hippo-{size}-{arm.replace('+', '_')}-seed{seed}"
                folder = work / "datasets" / name
                shutil.rmtree(folder, ignore_errors=True)  # rebuilt from scratch on every call
                train_ids = list(train_real)
                for case_id in [*train_real, *heldout]:
                    case = usable[case_id]
                    link(case.images[0], folder / "images" / case.images[0].name)
                    assert case.label is not None
                    link(case.label, folder / "labels" / case.label.name)
                if arm != "real":
                    mode = arm.removeprefix("real+")
                    for variant, image, label in synthetic[(mode, seed)]:
                        if variant.rsplit("_", 1)[0] in train_real:
                            link(image, folder / "images" / image.name)
                            link(label, folder / "labels" / label.name)
                            train_ids.append(variant)
                assert not set(train_ids) & set(heldout)
                assert all(t.rsplit("_", 1)[0] not in heldout for t in train_ids)
                split = save_folds([{"train": train_ids, "val": heldout}], work / "splits" / f"{name}.json")
                schedule = epochs_for(
                    settings.hippo_steps, len(train_ids), settings.hippo_batch, settings.lr_drop_at
                )
                config = demo.hippocampus_segmenter(
                    folder,
                    epochs=schedule["epochs"],
                    output_dir=work / "runs",
                    name=name,
                    base_filters=settings.hippo_base_filters,
                    num_levels=settings.hippo_levels,
                    patch_size=[settings.hippo_patch] * 3,
                    split={"method": "file", "file": str(split), "fold": 0},
                    batch_size=settings.hippo_batch,
                    lr=settings.hippo_lr,
                    seed=seed,
                )
                config["data"]["cache_dir"] = str(work / "cache")
                config["schedule"] = {
                    "name": "multistep",
                    "milestones": [schedule["milestone_epoch"]],
                    "gamma": 0.1,
                }
                config["train"].update({"val_every": schedule["epochs"], "device": "cpu"})
                config["augment"] = {}
                tasks.append(
                    {
                        "size": size,
                        "arm": arm,
                        "seed": seed,
                        "name": name,
                        "config": config,
                        "schedule": schedule,
                        "train_cases": len(train_ids),
                    }
                )

    runs = run_all(tasks, work, jobs)
    results: dict[str, Any] = {
        "held_out": {
            "source": "fold-0 training cases outside the pools (--dev)" if dev else "fold-0 val",
            "count": len(heldout),
            "ids": heldout,
        },
        "pools": {str(size): pool[:size] for size in settings.hippo_sizes},
        "clean_cases": len(ids),
        "synthetic": synthesis_log,
        "runs": [{k: v for k, v in run.items() if k not in ("config", "per_case")} for run in runs],
        "summary": {},
    }
    for size in settings.hippo_sizes:
        by_arm = {
            arm: sorted((r for r in runs if r["size"] == size and r["arm"] == arm), key=lambda r: r["seed"])
            for arm in arms
        }
        summary: dict[str, Any] = {}
        for arm, arm_runs in by_arm.items():
            summary[arm] = {
                key: t_interval([r["final"][f"val_{key}"] for r in arm_runs])
                for key in ("dice_1", "dice_2", "dice")
            }
            summary[arm]["steps"] = sorted({r["schedule"]["steps"] for r in arm_runs})
            summary[arm]["train_cases"] = arm_runs[0]["train_cases"]
        base = by_arm["real"]
        for arm in arms[1:]:
            paired = [
                a["final"]["val_dice"] - b["final"]["val_dice"]
                for a, b in zip(by_arm[arm], base, strict=True)
            ]
            summary[f"{arm} minus real"] = {
                "dice_seed_paired": t_interval(paired),
                "dice_case_bootstrap": bootstrap_difference(
                    dice_matrix(by_arm[arm], heldout), dice_matrix(base, heldout), mean_dice
                ),
            }
        results["summary"][str(size)] = summary
    return results


def dice_matrix(runs: list[dict[str, Any]], heldout: list[str]) -> np.ndarray:
    """``(seeds, cases, 2)`` Dice of classes 1 and 2, cases in ``heldout`` order."""
    out = []
    for run in runs:
        by_case = {row["case_id"]: row["dice"] for row in run["per_case"]}
        out.append([[by_case[c]["1"], by_case[c]["2"]] for c in heldout])
    return np.asarray(out, dtype=float)


def mean_dice(matrix: np.ndarray) -> float:
    """The engine's summary: per-class mean over cases, then the mean of the classes, then over seeds."""
    return float(np.nanmean(matrix, axis=1).mean())


# --- AdrenalMNIST3D --------------------------------------------------------------------------------


def adrenal(settings: Settings, data_root: Path, work: Path, jobs: int) -> dict[str, Any]:
    from medvol import demo
    from medvol.augment import AugmentConfig, build_augmenter
    from medvol.augment.pipeline import spawn_seed

    source = data_root / ADRENAL
    arrays = np.load(source)
    labels = arrays["train_labels"][:, 0]
    rng = np.random.default_rng(SPLIT_SEED)
    chosen = np.sort(
        np.concatenate(
            [
                rng.choice(
                    np.flatnonzero(labels == c),
                    round(settings.adrenal_fraction * (labels == c).sum()),
                    replace=False,
                )
                for c in np.unique(labels)
            ]
        )
    )
    images, targets = arrays["train_images"][chosen], arrays["train_labels"][chosen]
    # The official test split is never read. medvol's MedMNIST loader needs a test split, and one
    # of zero cases does not load (see the report), so the file holds a one-volume placeholder of zeros.
    placeholder = {
        "test_images": np.zeros((1, *images.shape[1:]), np.uint8),
        "test_labels": np.zeros((1, 1), np.uint8),
    }
    val = {"val_images": arrays["val_images"], "val_labels": arrays["val_labels"]}
    subset = {
        "train_cases": len(chosen),
        "train_class_counts": np.bincount(targets[:, 0]).tolist(),
        "val_cases": len(arrays["val_labels"]),
        "val_class_counts": np.bincount(arrays["val_labels"][:, 0]).tolist(),
        "train_indices": chosen.tolist(),
    }
    log(f"AdrenalMNIST3D subset: {subset['train_cases']} training cases {subset['train_class_counts']}")

    files: dict[tuple[str, int], Path] = {}
    unchanged: dict[int, float] = {}
    for seed in settings.seeds:
        real = work / "adrenal" / f"real-seed{seed}.npz"
        real.parent.mkdir(parents=True, exist_ok=True)
        np.savez(real, train_images=images, train_labels=targets, **val, **placeholder)
        files[("real", seed)] = files[("real+online-augment", seed)] = real
        if "real+augment" in settings.adrenal_arms:
            config = AugmentConfig()
            variants, variant_labels, same = [], [], 0
            for index in range(len(images)):
                for k in range(settings.adrenal_per_case):
                    augmenter = build_augmenter(config, spawn_seed(seed, index, k))
                    volume = augmenter({"image": images[index][np.newaxis].astype(np.float32) / 255.0})[
                        "image"
                    ][0]
                    variant = np.clip(np.rint(volume * 255.0), 0, 255).astype(np.uint8)
                    same += int(np.array_equal(variant, images[index]))
                    variants.append(variant)
                    variant_labels.append(targets[index])
            unchanged[seed] = same / len(variants)
            path = work / "adrenal" / f"augment-seed{seed}.npz"
            np.savez(
                path,
                train_images=np.concatenate([images, np.stack(variants)]),
                train_labels=np.concatenate([targets, np.stack(variant_labels)]),
                **val,
                **placeholder,
            )
            files[("real+augment", seed)] = path

    tasks = []
    for arm in settings.adrenal_arms:
        for seed in settings.seeds:
            path = files[(arm, seed)]
            cases = int(np.load(path)["train_labels"].shape[0])
            schedule = epochs_for(settings.adrenal_steps, cases, settings.adrenal_batch, settings.lr_drop_at)
            name = f"adrenal-{arm.replace('+', '_')}-seed{seed}"
            config = demo.medmnist_classifier(
                path,
                epochs=schedule["epochs"],
                output_dir=work / "runs",
                name=name,
                widths=settings.adrenal_width,
                stem_stride=1,
                batch_size=settings.adrenal_batch,
                lr=settings.adrenal_lr,
                seed=seed,
            )
            milestones = [schedule["milestone_epoch"]]
            config["schedule"] = {"name": "multistep", "milestones": milestones, "gamma": 0.1}
            config["train"].update({"val_every": schedule["epochs"], "device": "cpu"})
            config["augment"] = {} if arm == "real+online-augment" else None
            tasks.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "name": name,
                    "config": config,
                    "schedule": schedule,
                    "train_cases": cases,
                }
            )
    runs = run_all(tasks, work, jobs)
    summary: dict[str, Any] = {}
    by_arm = {
        arm: sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
        for arm in settings.adrenal_arms
    }
    for arm, arm_runs in by_arm.items():
        summary[arm] = {
            "auc": t_interval([r["final"]["val_auc"] for r in arm_runs]),
            "acc": t_interval([r["final"]["val_acc"] for r in arm_runs]),
            "steps": sorted({r["schedule"]["steps"] for r in arm_runs}),
            "train_cases": arm_runs[0]["train_cases"],
        }
    for arm in settings.adrenal_arms[1:]:
        paired = [
            a["final"]["val_auc"] - b["final"]["val_auc"]
            for a, b in zip(by_arm[arm], by_arm["real"], strict=True)
        ]
        summary[f"{arm} minus real"] = {
            "auc_seed_paired": t_interval(paired),
            "auc_case_bootstrap": bootstrap_difference(
                probability_matrix(by_arm[arm]), probability_matrix(by_arm["real"]), mean_auc
            ),
        }
    return {
        "subset": subset,
        "augment_copies_identical_to_source": unchanged,
        "runs": [{k: v for k, v in run.items() if k not in ("config", "per_case")} for run in runs],
        "summary": summary,
    }


def probability_matrix(runs: list[dict[str, Any]]) -> np.ndarray:
    """``(seeds, cases, 2)``: target and class-1 probability per validation case."""
    return np.asarray([[[row["target"], row["p1"]] for row in run["per_case"]] for run in runs], dtype=float)


def mean_auc(matrix: np.ndarray) -> float:
    """Mean over seeds of the ROC AUC (rank form, ties counted half; equals ``medvol.metrics.binary_auc``)."""
    from scipy.stats import rankdata

    aucs = []
    for seed in matrix:
        positive = seed[:, 0] == 1
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        ranks = rankdata(seed[:, 1])
        aucs.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs))


# --- orchestration ---------------------------------------------------------------------------------


def run_all(tasks: list[dict[str, Any]], work: Path, jobs: int) -> list[dict[str, Any]]:
    """Train and rescore every task, ``jobs`` at a time; checks the rescoring against the engine."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    (work / "configs").mkdir(parents=True, exist_ok=True)

    def one(task: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        run_dir = run_training(task["config"], work / "configs" / f"{task['name']}.yaml", threads)
        final = final_metrics(run_dir)
        rows = run_scoring(run_dir, threads)
        check = engine_check(final, rows)
        return {
            **task,
            "final": final,
            "per_case": rows,
            "engine_check": check,
            "wall_seconds": round(time.perf_counter() - started, 1),
        }

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, tasks))


def engine_check(final: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-case rescoring, summarised as the engine does, against ``metrics.jsonl``."""
    if "dice" in rows[0]:
        mine = {f"val_dice_{k}": float(np.nanmean([row["dice"][k] for row in rows])) for k in ("1", "2")}
    else:
        from medvol.metrics import binary_auc

        targets = np.array([row["target"] for row in rows])
        mine = {"val_auc": binary_auc(targets, np.array([row["p1"] for row in rows]))}
    difference = max(abs(mine[k] - final[k]) for k in mine)
    if difference > 1e-4:
        raise RuntimeError(f"per-case rescoring differs from the engine by {difference}: {mine} vs {final}")
    return {"max_abs_difference": difference, "cases": len(rows)}


def environment() -> dict[str, Any]:
    import monai
    import torch

    import medvol

    return {
        "medvol_commit": git_state(unknown="unknown"),
        "medvol": medvol.__version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        **hardware(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: one seed, tiny runs (< 2 min)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared real data folder")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--work", type=Path, help="keep runs and datasets here (default: a temporary folder)")
    parser.add_argument(
        "--jobs", type=int, default=2, help="training runs at a time (threads split between them)"
    )
    parser.add_argument("--only", choices=["hippocampus", "adrenal"], help="run one of the two experiments")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2 3 4)")
    parser.add_argument("--heldout", type=int, help="score only the first N held-out cases (sorted ids)")
    parser.add_argument("--dev", action="store_true", help="hold out fold-0 training cases instead (tuning)")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a Settings field (value parsed as YAML), e.g. hippo_steps=1000",
    )
    parser.add_argument("--score", type=Path, help=argparse.SUPPRESS)  # internal: rescore one run folder
    args = parser.parse_args(argv)
    if args.score is not None:
        print(json.dumps(score(args.score)))
        return 0

    settings = QUICK if args.quick else Settings()
    if args.seeds:
        settings = replace(settings, seeds=tuple(args.seeds))
    if args.heldout:
        settings = replace(settings, hippo_heldout=args.heldout)
    for item in args.setting:
        name, _, text = item.partition("=")
        if name not in Settings.__dataclass_fields__:
            raise SystemExit(f"unknown setting {name!r}; known: {', '.join(Settings.__dataclass_fields__)}")
        value = yaml.safe_load(text)
        settings = replace(settings, **{name: tuple(value) if isinstance(value, list) else value})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_synthetic-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {
            "benchmark": "synthetic training data: real only vs real + synthetic",
            "command": command_line(),
            "quick": args.quick,
            "dev": args.dev,
            "settings": asdict(settings),
            "environment": environment(),
        }
        if args.only in (None, "hippocampus"):
            report["hippocampus"] = hippocampus(settings, args.data, work, args.jobs, args.dev)
        if args.only in (None, "adrenal") and not args.dev:
            report["adrenal"] = adrenal(settings, args.data, work, args.jobs)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
