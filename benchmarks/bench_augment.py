"""Data off the critical path: per-sample vs batched augmentation vs prefetch vs a plain MONAI loop.

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_augment.py [--quick] [--out results.json] [--case NAME]

Cases, each the recipe's own model, batch size, optimiser, precision and augmentation:

- ``adrenal-cpu``: ``medvol/studies/recipes/adrenalmnist3d-resnet18-cpu.yaml`` (ResNet-18 width 16,
  batch 32, flips on every axis + affine in 80% of the samples), all 1,188
  training cases (``--quick``: 256).
- ``demo-resnet10``: the demo's AdrenalMNIST3D ResNet-10 (``medvol.demo.classifier_config``:
  affine in 30%, the default intensity stages), on the same cases.
- ``hippocampus-cpu``: ``medvol/studies/recipes/hippocampus-unet-cpu.yaml`` (its UNet, 40×56×40 patches,
  batch 4, 2 workers, affine 30% + the default intensity stages), fold 0 of the
  first 60 clean pairs (``--quick``: 12).

Per case, interleaved (sample, batch, prefetch, monai, then the reverse order on the next
repeat, so drift hits all four alike):

- ``sample``: ``medvol.engine.train.train`` with ``augment.where: sample`` (every stage per
  sample in the data loader, numpy/MONAI) and ``data.prefetch: false``, the recipe's workers;
- ``batch``: the same with ``augment.where: batch`` (one resampling per batch on the training device);
- ``prefetch``: ``augment.where: batch``, ``data.num_workers: 0`` and ``data.prefetch: true`` (a
  background thread reads and crops the next batches while the model computes);
- ``batch-0`` (only with ``--mode``): ``augment.where: batch``, ``data.num_workers: 0``, no
  prefetch: for a recipe with workers, what dropping them costs without the thread;
- ``none`` (only with ``--mode``): no augmentation at all, ``data.num_workers: 0`` and
  ``data.prefetch: true``: the floor set by the model's step alone;
- ``monai``: a hand-written loop doing the same augmentation the plain MONAI way: MONAI
  dictionary transforms per sample (``RandFlipd``, ``RandAffined``, ``RandBiasFieldd``,
  ``RandGaussianSmoothd``, ``RandGaussianNoised``, ``RandScaleIntensityd``,
  ``RandScaleIntensityFixedMeand``, ``RandAdjustContrastd``) in a ``DataLoader`` over the same
  un-augmented samples (medvol's datasets with no augmenter), same model, optimiser, loss and
  precision, no validation.

"Today" is what the recipe resolves to without prefetching (``augment.where: auto``): ``batch`` for
the classifiers (no workers), ``sample`` for the hippocampus recipe (2 workers).

Each run trains ``epochs`` epochs; the first is warm-up (and builds the hippocampus cache) and is
discarded. Reported per epoch: samples/s over the training pass, the share of it spent waiting
for the next batch (medvol's ``metrics.jsonl``; the loop measures the same way) and the
milliseconds per sample spent not waiting (the step, with batched augmentation where it runs).
The JSON report goes to stdout (and ``--out``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from common import environment, finish_report, make_log, stdout_to_stderr
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medvol import demo  # noqa: E402
from medvol.augment import AugmentConfig  # noqa: E402
from medvol.config import parse_config  # noqa: E402
from medvol.engine.distributed import Runtime  # noqa: E402
from medvol.engine.precision import resolve_precision  # noqa: E402
from medvol.engine.run_folder import RunFolder  # noqa: E402
from medvol.engine.train import build_optimizer, train  # noqa: E402
from medvol.losses import create_loss  # noqa: E402
from medvol.models import create_model  # noqa: E402
from medvol.tasks import task_for  # noqa: E402
from tests.shared_samples import copy_hippocampus_pairs, write_adrenal_subset  # noqa: E402

log = make_log("bench_augment")
DATA = ROOT.parent / "shared" / "data"
MODES = ("sample", "batch", "prefetch", "monai")  # the default; --mode chooses others
ALL_MODES = (*MODES, "batch-0", "none")
SIZES = {"adrenal": 384, "hippocampus": 60}  # --adrenal-cases, --hippocampus-cases


def adrenal_cpu(work: Path, quick: bool) -> dict[str, Any]:
    config = yaml.safe_load(
        (ROOT / "medvol" / "studies" / "recipes" / "adrenalmnist3d-resnet18-cpu.yaml").read_text()
    )
    config["data"]["root"] = str(adrenal_file(work, quick))
    return config


def demo_resnet10(work: Path, quick: bool) -> dict[str, Any]:
    config = demo.classifier_config(work, quick=False)
    config["data"]["root"] = str(adrenal_file(work, quick))
    return config


def hippocampus_cpu(work: Path, quick: bool) -> dict[str, Any]:
    config = yaml.safe_load(
        (ROOT / "medvol" / "studies" / "recipes" / "hippocampus-unet-cpu.yaml").read_text()
    )
    # The first 60 clean pairs (--quick: 12), fold 0: throughput does not depend on the case count.
    labels = (DATA / "msd-hippocampus" / "labels").iterdir()
    ids = sorted(p.name[len("hippocampus_") : -len(".nii.gz")] for p in labels)
    usable = [i for i in ids if i not in ("010", "281")][: 12 if quick else SIZES["hippocampus"]]
    config["data"]["root"] = str(copy_hippocampus_pairs(DATA, work / "hippocampus", usable))
    config["data"]["cache_dir"] = str(work / "cache")  # built in the first run, shared by the others
    return config


CASES: dict[str, Callable[[Path, bool], dict[str, Any]]] = {
    "adrenal-cpu": adrenal_cpu,
    "demo-resnet10": demo_resnet10,
    "hippocampus-cpu": hippocampus_cpu,
}


def adrenal_file(work: Path, quick: bool) -> Path:
    """The first cases of each class: 384 training (``--quick``: 64), 64 validation."""
    train = 64 if quick else SIZES["adrenal"]
    path = work / f"adrenal-{train}.npz"
    counts = {"train": train, "val": 64, "test": 8}
    return path if path.is_file() else write_adrenal_subset(DATA, path, counts)


def with_run(config: dict[str, Any], work: Path, name: str, epochs: int, mode: str) -> dict[str, Any]:
    """``config`` for ``epochs`` epochs in ``mode`` (see the module docstring), validating once at
    the end, written under ``work``."""
    out = json.loads(json.dumps(config))
    out["train"].update({"epochs": epochs, "val_every": epochs, "early_stop_patience": None})
    out["tracking"] = {"output_dir": str(work / "runs"), "name": name, "tensorboard": False}
    out["data"]["prefetch"] = mode in ("prefetch", "none")
    if mode in ("prefetch", "batch-0", "none"):
        out["data"]["num_workers"] = 0
    if mode == "none":
        out["augment"] = None
    elif mode != "monai":
        out["augment"] = {**(out.get("augment") or {}), "where": "sample" if mode == "sample" else "batch"}
    return out


def today(config: dict[str, Any]) -> str:
    """The mode the recipe ran in before prefetching: ``augment.where: auto`` on a CPU."""
    return "batch" if config["data"].get("num_workers", 0) == 0 else "sample"


def run_medvol(config: dict[str, Any]) -> list[dict[str, float]]:
    """Train; the per-epoch ``samples_per_s`` and ``data_wait_share`` from ``metrics.jsonl``."""
    with stdout_to_stderr():
        run_dir = train(parse_config(config))
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: line[k] for k in ("samples_per_s", "data_wait_share")} for line in lines]


# -- the plain MONAI loop --------------------------------------------------------------------------


def monai_transforms(augment: AugmentConfig, label_maps: bool) -> Any:
    """The recipe's augmentation as plain MONAI dictionary transforms, per sample."""
    from monai import transforms as T

    c = augment
    both = ["image", "label"] if label_maps else ["image"]
    steps: list[Any] = [T.RandFlipd(both, prob=c.flip_prob, spatial_axis=a) for a in c.flip_axes]
    if c.affine_prob:
        steps.append(
            T.RandAffined(
                both,
                prob=c.affine_prob,
                rotate_range=(math.radians(c.rotate_deg),) * 3,
                scale_range=(c.scale_range,) * 3,
                shear_range=(c.shear_range,) * 6,
                translate_range=(c.translate_vox,) * 3,
                mode=("bilinear", "nearest") if label_maps else "bilinear",
                padding_mode="zeros",
            )
        )
    sigma, b, k = c.blur_sigma_vox, c.brightness_range, c.contrast_range
    optional = [
        (c.bias_prob, lambda: T.RandBiasFieldd("image", prob=c.bias_prob, coeff_range=c.bias_coeff_range)),
        (c.blur_prob, lambda: T.RandGaussianSmoothd("image", sigma, sigma, sigma, prob=c.blur_prob)),
        (c.noise_prob, lambda: T.RandGaussianNoised("image", prob=c.noise_prob, std=c.noise_std)),
        (c.brightness_prob, lambda: T.RandScaleIntensityd("image", factors=b, prob=c.brightness_prob)),
        (c.contrast_prob, lambda: T.RandScaleIntensityFixedMeand("image", prob=c.contrast_prob, factors=k)),
        (c.gamma_prob, lambda: T.RandAdjustContrastd("image", prob=c.gamma_prob, gamma=c.gamma_range)),
    ]
    steps += [make() for prob, make in optional if prob > 0]
    return T.Compose([*steps, T.EnsureTyped(both, track_meta=False)])


class MonaiSamples(Dataset[dict[str, Any]]):
    """medvol's un-augmented training samples through per-sample MONAI transforms."""

    def __init__(self, samples: Any, transform: Any) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        return self.transform({"image": sample["image"], "label": sample["label"]})


def run_monai_loop(config: dict[str, Any], work: Path) -> list[dict[str, float]]:
    """The hand-written loop; per epoch ``samples_per_s`` and ``data_wait_share``."""
    parsed = parse_config(config)
    assert parsed.augment is not None
    torch.manual_seed(parsed.train.seed)
    runtime = Runtime(device=torch.device("cpu"))
    data = task_for(parsed.model_copy(update={"augment": None})).build_data(runtime, RunFolder(work / "loop"))
    label_maps = parsed.data.task == "segmentation"
    dataset = MonaiSamples(data.train, monai_transforms(parsed.augment, label_maps))
    dataset.transform.set_random_state(parsed.train.seed)
    loader = DataLoader(
        dataset,
        batch_size=parsed.train.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=parsed.data.num_workers,
    )
    model = create_model(parsed.model.name, **parsed.model.options)
    precision = resolve_precision(parsed.train.amp, parsed.train.channels_last, runtime.device, model)
    precision.prepare_model(model)
    loss_fn = create_loss(parsed.loss.name, **parsed.loss.options)
    optimizer = build_optimizer(parsed, model.parameters())
    model.train()
    epochs = []
    for _ in range(parsed.train.epochs):
        waited, samples = 0.0, 0
        started = ready = time.perf_counter()
        for batch in loader:
            waited += time.perf_counter() - ready
            images = precision.prepare_input(torch.as_tensor(batch["image"]))
            targets = torch.as_tensor(batch["label"])
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast(runtime.device):
                loss = loss_fn(model(images), targets)
            loss.backward()
            optimizer.step()
            samples += len(images)
            ready = time.perf_counter()
        elapsed = time.perf_counter() - started
        epochs.append({"samples_per_s": samples / elapsed, "data_wait_share": waited / elapsed})
    return epochs


# -- the run --------------------------------------------------------------------------------------


def augment_cost(config: dict[str, Any], repeats: int = 5) -> dict[str, float]:
    """Milliseconds to augment one batch of the recipe's shape: batched vs per sample (interleaved)."""
    from medvol.augment import build_augmenter
    from medvol.augment.batched import BatchAugmenter

    parsed = parse_config(config)
    assert parsed.augment is not None
    shape = tuple(parsed.data.patch_size or (28, 28, 28))
    n = parsed.train.batch_size
    images = torch.randn((n, 1, *shape))
    label_maps = torch.randint(0, 3, (n, 1, *shape)) if parsed.data.task == "segmentation" else None
    batched, per_sample = BatchAugmenter(parsed.augment, 0), build_augmenter(parsed.augment, 0)

    def one_by_one() -> None:
        for i in range(n):
            sample = {"image": images[i].numpy()}
            if label_maps is not None:
                sample["label"] = label_maps[i].numpy()
            per_sample(sample)

    times: dict[str, list[float]] = {"batch": [], "sample": []}
    for _ in range(repeats + 1):
        for mode, step in (("batch", lambda: batched(images, label_maps)), ("sample", one_by_one)):
            started = time.perf_counter()
            step()
            times[mode].append(1000 * (time.perf_counter() - started))
    return {f"{mode}_ms_per_batch": round(statistics.median(t[1:]), 1) for mode, t in times.items()}


def measure(
    name: str, work: Path, quick: bool, repeats: int, epochs: int, modes: tuple[str, ...] = MODES
) -> dict[str, Any]:
    base = CASES[name](work, quick)
    if base["data"]["task"] == "segmentation":  # builds the cache the timed runs share
        log(f"{name}: warm-up run")
        run_medvol(with_run(base, work, f"{name}-warmup", 1, "sample"))
    cost = augment_cost(with_run(base, work, f"{name}-cost", 1, "batch"))
    before = today(base)
    log(f"{name}: augmentation alone {cost}")
    timed: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for repeat in range(repeats):
        order = modes if repeat % 2 == 0 else modes[::-1]
        for mode in order:
            log(f"{name}: repeat {repeat + 1}/{repeats}, {mode}")
            config = with_run(base, work, f"{name}-{mode}-{repeat}", epochs, mode)
            per_epoch = run_monai_loop(config, work) if mode == "monai" else run_medvol(config)
            timed[mode] += per_epoch[1:]  # the first epoch of each run is warm-up
    summary = {mode: summarise(values) for mode, values in timed.items()}
    speed = {mode: summary[mode]["samples_per_s_median"] for mode in modes}
    report: dict[str, Any] = {
        "epochs_per_run": epochs,
        "repeats": repeats,
        "per_epoch": timed,
        "summary": summary,
        "augmentation_alone": cost,
        "today": before,
    }
    pairs = [("batch", "sample"), ("batch", "monai"), ("prefetch", before), ("prefetch", "monai")]
    pairs += [("prefetch", "sample"), ("prefetch", "none")]  # before the issue; the step-only floor
    for new, old in dict.fromkeys(pairs):
        if new in speed and old in speed:
            label = "today" if old == before and new == "prefetch" else old
            report[f"{new}_over_{label}"] = round(speed[new] / speed[old], 3)
            report[f"{new}_over_{label}_per_epoch"] = [
                round(a["samples_per_s"] / b["samples_per_s"], 3)
                for a, b in zip(timed[new], timed[old], strict=True)
            ]
    return report


def summarise(values: list[dict[str, float]]) -> dict[str, float]:
    speeds = [v["samples_per_s"] for v in values]
    waits = [v["data_wait_share"] for v in values]
    busy = [1000 * (1 - w) / s for w, s in zip(waits, speeds, strict=True)]
    return {
        "samples_per_s_median": round(statistics.median(speeds), 2),
        "samples_per_s_min": round(min(speeds), 2),
        "samples_per_s_max": round(max(speeds), 2),
        "data_wait_share_median": round(statistics.median(waits), 4),
        "busy_ms_per_sample_median": round(statistics.median(busy), 2),
        "epochs": len(values),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="subsets, 1 repeat: a smoke test")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--mode", choices=ALL_MODES, action="append", help=f"default: {', '.join(MODES)}")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--epochs", type=int, help="per run, the first discarded (default 2)")
    parser.add_argument("--adrenal-cases", type=int, default=SIZES["adrenal"], help="training cases")
    parser.add_argument("--hippocampus-cases", type=int, default=SIZES["hippocampus"], help="clean pairs")
    args = parser.parse_args()
    SIZES.update(adrenal=args.adrenal_cases, hippocampus=args.hippocampus_cases)
    repeats = args.repeats or (1 if args.quick else 2)
    epochs = args.epochs or 2
    report: dict[str, Any] = {"environment": environment(), "quick": args.quick, "sizes": SIZES, "cases": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-augment-") as folder:
        for name in args.case or list(CASES):
            work = Path(folder) / name
            work.mkdir()
            report["cases"][name] = measure(
                name, work, args.quick, repeats, epochs, tuple(args.mode or MODES)
            )
            log(f"{name}: {json.dumps(report['cases'][name]['summary'])}")
    finish_report(report, started, args.out)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
