"""Training throughput benchmark: medvol's trainer against a hand-written PyTorch loop, in one run.

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_train.py [--quick] [--out results.json] [--no-compile]

Parts (every part times its baseline in the same run):

1. ``trainer_vs_loop``: ``medvol.engine.train.train(config)`` on an
   AdrenalMNIST3D 28³ subset (balanced, first cases of each class) with a 3D
   ResNet-18 with the 28³ stem (3³ kernel, stride 1, no pool), Adam, batch 32,
   no augmentation, ``num_workers`` 0, TensorBoard off, validation only after
   the last epoch. The baseline is a minimal loop: the same model
   (``create_model``, same seed), the same images converted to float once, a
   ``DataLoader`` over a ``TensorDataset`` with the same batch size (shuffled,
   ``drop_last``), the same optimiser and loss, no validation, no checkpoints.
   Both report samples/s over the training pass only (medvol's
   ``metrics.jsonl`` ``samples_per_s``; validation and checkpointing happen
   outside it) and the share of it spent waiting for data. The first epoch of
   each is warm-up and discarded; the baseline's timed epochs are split before
   and after medvol's run so that drift hits both. The time medvol's whole run
   spends outside the training passes (set-up, validation, checkpoints) is
   also recorded. Cases: the fp32 default and ``train.amp: bf16``.
2. ``cpu_options``: the hand-written loop with the CPU options, one model copy
   per option from the same initial weights, timed interleaved (a, b, c, a, b,
   c, ...) after warm-up steps: fp32 (default), ``channels_last_3d`` (model and
   input), bf16 autocast, both, and ``torch.compile`` (compile time, i.e. the
   first step minus a steady step, reported apart from the steady state). For
   the ResNet-18 above at the protocol width (28³, batch 32, real images), the
   16-filter hippocampus UNet ``medvol/studies/recipes/hippocampus-unet-cpu.yaml`` used (40×56×40
   patches, batch 4, Dice + CE, random inputs) and the UNet with medvol's
   defaults (64³, batch 2). Dynamo is reset before each model, so every model
   compiles afresh. The first step's loss from identical weights and batch is
   recorded per option, to show what bf16 changes numerically.

``--only trainer|options`` and ``--case NAME`` run a part or one case.

The JSON report goes to stdout (and ``--out``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_io import DEFAULT_DATA
from common import environment, finish_report, make_log, stdout_to_stderr
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medvol import demo
from medvol.config import parse_config
from medvol.engine.train import train
from medvol.losses import create_loss
from medvol.models import create_model

ADRENAL = Path("adrenalmnist3d") / "adrenalmnist3d.npz"
UNET_OPTIONS = demo.unet_options(base_filters=16, num_levels=4)  # the hippocampus recipe's earlier UNet
LR = 1e-3


@dataclass(frozen=True)
class TrainerCase:
    """One trainer-vs-loop comparison."""

    name: str
    widths: int  # ResNet-18 stage-1 channels (64: the MedMNIST protocol model)
    train_samples: int  # per epoch (a multiple of the batch size)
    epochs: int  # including the discarded warm-up epoch
    batch_size: int = 32
    amp: str = "none"  # "none" or "bf16": medvol's train.amp, and autocast in the baseline


@dataclass(frozen=True)
class OptionsCase:
    """One model for the CPU-options study."""

    name: str
    model: str
    options: dict[str, Any]
    input_shape: tuple[int, int, int]
    batch_size: int
    warmup_steps: int
    rounds: int
    steps_per_round: int
    compile: bool = True


@dataclass(frozen=True)
class Sizes:
    """How big and how often: the full run or the ``--quick`` smoke test."""

    trainer: tuple[TrainerCase, ...]
    options: tuple[OptionsCase, ...] = field(default_factory=tuple)


FULL = Sizes(
    trainer=(
        TrainerCase("resnet18_w16_fp32", widths=16, train_samples=256, epochs=5),
        TrainerCase("resnet18_w16_bf16", widths=16, train_samples=256, epochs=4, amp="bf16"),
    ),
    options=(
        OptionsCase(
            "resnet18_protocol",
            "resnet18",
            demo.resnet_options(widths=64, stem_stride=1),
            (28, 28, 28),
            batch_size=32,
            warmup_steps=1,
            rounds=2,
            steps_per_round=1,
        ),
        OptionsCase(
            "unet_hippocampus",
            "unet",
            UNET_OPTIONS,
            (40, 56, 40),
            batch_size=4,
            warmup_steps=3,
            rounds=4,
            steps_per_round=8,
        ),
        OptionsCase(
            "unet_64",
            "unet",
            {"in_channels": 1, "num_classes": 3},  # medvol's defaults: 5 levels, 16-256 channels
            (64, 64, 64),
            batch_size=2,
            warmup_steps=3,
            rounds=4,
            steps_per_round=5,
        ),
    ),
)
QUICK = Sizes(
    trainer=(TrainerCase("resnet18_w4", widths=4, train_samples=32, epochs=3, batch_size=8),),
    options=(
        OptionsCase(
            "resnet18_w4",
            "resnet18",
            demo.resnet_options(widths=4, stem_stride=1),
            (28, 28, 28),
            batch_size=4,
            warmup_steps=1,
            rounds=1,
            steps_per_round=1,
            compile=False,
        ),
        OptionsCase(
            "unet_small",
            "unet",
            demo.unet_options(),
            (16, 16, 16),
            batch_size=2,
            warmup_steps=2,
            rounds=1,
            steps_per_round=1,
        ),
    ),
)


log = make_log("bench_train")


# -------------------------------------------------------------------------- data


def adrenal_subset(source: Path, train_samples: int, folder: Path) -> Path:
    """A balanced AdrenalMNIST3D subset npz (train, 16 val, 2 test) for ``medvol train``."""
    arrays = dict(np.load(source))
    subset = {}
    for split, count in (("train", train_samples), ("val", 16), ("test", 2)):
        labels = arrays[f"{split}_labels"][:, 0]
        per_class = [np.flatnonzero(labels == c)[: count // 2] for c in (0, 1)]
        chosen = np.sort(np.concatenate(per_class))
        subset[f"{split}_images"] = arrays[f"{split}_images"][chosen]
        subset[f"{split}_labels"] = arrays[f"{split}_labels"][chosen]
    path = folder / f"adrenal_{train_samples}.npz"
    np.savez(path, **subset)
    return path


# ------------------------------------------------------------- trainer vs loop


class BaselineLoop:
    """The minimal hand-written loop the trainer is compared with."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, case: TrainerCase, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = create_model("resnet18", **demo.resnet_options(widths=case.widths, stem_stride=1))
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.loss_fn = nn.CrossEntropyLoss()
        self.bf16 = case.amp == "bf16"
        x = torch.from_numpy(images[:, np.newaxis].astype(np.float32) / 255.0)  # once, untimed
        y = torch.from_numpy(labels.reshape(-1).astype(np.int64))
        self.loader = DataLoader(
            TensorDataset(x, y),
            batch_size=case.batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(seed),
        )

    def epoch(self) -> dict[str, float]:
        """One training pass, timed the way medvol's trainer times its own."""
        samples, waited, total = 0, 0.0, 0.0
        started = time.perf_counter()
        ready = started
        for images, targets in self.loader:
            waited += time.perf_counter() - ready
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.loss_fn(self.model(images), targets)
            loss.backward()
            self.optimizer.step()
            total += loss.item()
            samples += len(images)
            ready = time.perf_counter()
        elapsed = time.perf_counter() - started
        return {
            "samples_per_s": round(samples / elapsed, 3),
            "data_wait_share": round(waited / elapsed, 4),
            "seconds": round(elapsed, 3),
        }


def medvol_config(npz: Path, case: TrainerCase, out: Path) -> dict[str, Any]:
    config = demo.medmnist_classifier(
        npz,
        epochs=case.epochs,
        output_dir=out,
        name=case.name,
        model="resnet18",
        widths=case.widths,
        stem_stride=1,
        batch_size=case.batch_size,
        lr=LR,
    )
    config["train"].update(
        {
            "amp": case.amp,
            "channels_last": False,  # like the hand-written loop: compare the trainer, not the layout
            "val_every": case.epochs,  # validate once, after the last (timed) epoch
            "device": "cpu",
        }
    )
    return config


def trainer_vs_loop(case: TrainerCase, data: Path, tmp: Path) -> dict[str, Any]:
    npz = adrenal_subset(data / ADRENAL, case.train_samples, tmp)
    with np.load(npz) as arrays:
        images, labels = arrays["train_images"], arrays["train_labels"]
    timed = case.epochs - 1
    before = (timed + 1) // 2

    log(f"{case.name}: baseline loop, warm-up epoch + {before} timed epochs")
    baseline = BaselineLoop(images, labels, case)
    log(f"  warm-up {baseline.epoch()}")
    baseline_epochs = [baseline.epoch() for _ in range(before)]
    for record in baseline_epochs:
        log(f"  timed {record}")

    log(f"{case.name}: medvol train, {case.epochs} epochs (the first discarded)")
    config = parse_config(medvol_config(npz, case, tmp / "runs"))
    started = time.perf_counter()
    run_dir = train(config)
    medvol_wall_s = time.perf_counter() - started
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    log(f"{case.name}: baseline loop, {timed - before} more timed epochs")
    after = [baseline.epoch() for _ in range(timed - before)]
    for record in after:
        log(f"  timed {record}")
    baseline_epochs += after

    medvol_epochs = [
        {
            "samples_per_s": r["samples_per_s"],
            "data_wait_share": r["data_wait_share"],
            "training_pass_s": round(case.train_samples / r["samples_per_s"], 3),
            "epoch_s": r["seconds"],
            "validated": "val_auc" in r,
        }
        for r in history[1:]
    ]
    medvol_sps = statistics.median(e["samples_per_s"] for e in medvol_epochs)
    baseline_sps = statistics.median(e["samples_per_s"] for e in baseline_epochs)
    # Everything but the training passes: data and model set-up, validation, checkpoints.
    passes = history[0]["seconds"] + sum(e["training_pass_s"] for e in medvol_epochs)
    steps = case.train_samples // case.batch_size
    return {
        "model": f"resnet18, widths {case.widths}, 28³ stem (3³ kernel, stride 1, no pool)",
        "amp": case.amp,
        "parameters": sum(p.numel() for p in baseline.model.parameters()),
        "train_samples_per_epoch": case.train_samples,
        "batch_size": case.batch_size,
        "epochs": case.epochs,
        "timed_epochs": timed,
        "medvol": {
            "samples_per_s_median": medvol_sps,
            "data_wait_share_median": statistics.median(e["data_wait_share"] for e in medvol_epochs),
            "run_s_outside_training_passes": round(medvol_wall_s - passes, 2),
            "whole_run_s": round(medvol_wall_s, 1),
            "epochs": medvol_epochs,
            "warmup_epoch": {k: history[0][k] for k in ("samples_per_s", "data_wait_share", "seconds")},
        },
        "baseline": {
            "samples_per_s_median": baseline_sps,
            "data_wait_share_median": statistics.median(e["data_wait_share"] for e in baseline_epochs),
            "epochs": baseline_epochs,
        },
        "ratio_medvol_to_baseline": round(medvol_sps / baseline_sps, 3),
        "medvol_extra_ms_per_step": round(1000 * (1 / medvol_sps - 1 / baseline_sps) * case.batch_size, 1),
        "steps_per_epoch": steps,
    }


# ------------------------------------------------------------------ CPU options


@dataclass
class Variant:
    """One CPU option: its own model copy, optimiser and step function."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    channels_last: bool
    bf16: bool
    compiled: bool
    step_times: list[float] = field(default_factory=list)
    warmup_times: list[float] = field(default_factory=list)
    first_step_s: float | None = None
    first_loss: float | None = None
    error: str | None = None

    def autocast(self) -> AbstractContextManager[Any]:
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else nullcontext()


def make_variants(case: OptionsCase, compile_models: bool) -> list[Variant]:
    torch.manual_seed(0)
    reference = create_model(case.model, **case.options)
    reference.train()
    specs = [
        ("fp32", False, False, False),
        ("channels_last_3d", True, False, False),
        ("bf16_autocast", False, True, False),
        ("channels_last_3d+bf16", True, True, False),
    ]
    if compile_models and case.compile:
        specs.append(("torch_compile", False, False, True))
    variants = []
    for name, channels_last, bf16, compiled in specs:
        model = copy.deepcopy(reference)
        if channels_last:
            model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        run_model: nn.Module = torch.compile(model) if compiled else model  # type: ignore[assignment]
        variants.append(Variant(name, run_model, optimizer, channels_last, bf16, compiled))
    return variants


def option_batches(case: OptionsCase, data: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Four fixed batches: real AdrenalMNIST3D images for the ResNet, random patches for the UNet."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    if case.model.startswith("resnet"):
        with np.load(data / ADRENAL) as arrays:
            images = arrays["train_images"][: 4 * case.batch_size]
            labels = arrays["train_labels"][: 4 * case.batch_size, 0]
        x = torch.from_numpy(images[:, np.newaxis].astype(np.float32) / 255.0)
        y = torch.from_numpy(labels.astype(np.int64))
        for index in range(4):
            part = slice(index * case.batch_size, (index + 1) * case.batch_size)
            batches.append((x[part].contiguous(), y[part].contiguous()))
        return batches
    shape = (case.batch_size, 1, *case.input_shape)
    for _ in range(4):
        x = torch.randn(shape, generator=generator)
        y = torch.randint(0, case.options["num_classes"], shape, generator=generator)
        batches.append((x, y))
    return batches


def options_loss(case: OptionsCase) -> nn.Module:
    return nn.CrossEntropyLoss() if case.model.startswith("resnet") else create_loss("dice_ce")


def train_step(variant: Variant, loss_fn: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> float:
    if variant.channels_last:
        images = images.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    variant.optimizer.zero_grad(set_to_none=True)
    with variant.autocast():
        loss = loss_fn(variant.model(images), targets)
    loss.backward()
    variant.optimizer.step()
    return float(loss.detach())


def cpu_options(case: OptionsCase, data: Path, compile_models: bool) -> dict[str, Any]:
    torch._dynamo.reset()  # compile each model afresh (no automatic dynamic shapes from an earlier model)
    variants = make_variants(case, compile_models)
    batches = option_batches(case, data)
    loss_fn = options_loss(case)
    batch_index = 0

    def run(variant: Variant, steps: int) -> list[float]:
        nonlocal batch_index
        times = []
        for _ in range(steps):
            images, targets = batches[batch_index % len(batches)]
            batch_index += 1
            start = time.perf_counter()
            train_step(variant, loss_fn, images, targets)
            times.append(time.perf_counter() - start)
        return times

    # The first step of every variant: same weights, same batch; compile happens here.
    for variant in variants:
        log(f"{case.name}: first step, {variant.name}")
        images, targets = batches[0]
        start = time.perf_counter()
        try:
            variant.first_loss = train_step(variant, loss_fn, images, targets)
        except Exception as error:  # torch.compile can fail without a working toolchain
            variant.error = f"{type(error).__name__}: {error}".splitlines()[0][:500]
            variant.first_step_s = None
            log(f"  {variant.name} failed: {variant.error}")
            traceback.print_exc(limit=3, file=sys.stderr)
            continue
        variant.first_step_s = time.perf_counter() - start
    working = [v for v in variants if v.error is None]
    for variant in working:
        variant.warmup_times = run(variant, case.warmup_steps - 1)
    for round_index in range(case.rounds):
        for variant in working:
            log(f"{case.name}: round {round_index + 1}/{case.rounds}, {variant.name}")
            variant.step_times += run(variant, case.steps_per_round)

    base = statistics.median(variants[0].step_times)
    results: dict[str, Any] = {}
    for variant in variants:
        if variant.error is not None:
            results[variant.name] = {"error": variant.error}
            continue
        step_s = statistics.median(variant.step_times)
        row: dict[str, Any] = {
            "step_s_median": round(step_s, 4),
            "samples_per_s": round(case.batch_size / step_s, 3),
            "ratio_to_fp32": round(base / step_s, 3),
            "first_step_s": round(variant.first_step_s or 0.0, 2),
            "more_warmup_steps_s": [round(t, 3) for t in variant.warmup_times],
            "first_loss": round(variant.first_loss or 0.0, 5),
            "first_loss_minus_fp32": round((variant.first_loss or 0.0) - (variants[0].first_loss or 0.0), 5),
            "step_s_runs": [round(t, 4) for t in variant.step_times],
        }
        if variant.compiled:
            row["compile_s"] = round((variant.first_step_s or 0.0) - step_s, 2)
        results[variant.name] = row
    ranked = sorted((r["ratio_to_fp32"], n) for n, r in results.items() if "ratio_to_fp32" in r)
    return {
        "model": f"{case.model} {case.options}",
        "parameters": sum(p.numel() for p in variants[0].model.parameters()),
        "input": [case.batch_size, 1, *case.input_shape],
        "loss": type(loss_fn).__name__,
        "timed_steps_per_variant": case.rounds * case.steps_per_round,
        "results": results,
        "fastest": ranked[-1][1],
    }


# -------------------------------------------------------------------- the report


def goals(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, case in report["trainer_vs_loop"].items():
        out[f"{name}: medvol's throughput at least 0.95x the hand-written loop"] = {
            "ratio": case["ratio_medvol_to_baseline"],
            "medvol_data_wait_share": case["medvol"]["data_wait_share_median"],
            "baseline_data_wait_share": case["baseline"]["data_wait_share_median"],
            "met": case["ratio_medvol_to_baseline"] >= 0.95,
        }
    for name, case in report["cpu_options"].items():
        out[f"{name}: fastest CPU option"] = {
            "fastest": case["fastest"],
            "ratios_to_fp32": {k: v.get("ratio_to_fp32", v.get("error")) for k, v in case["results"].items()},
        }
    return out


def run(sizes: Sizes, data: Path, compile_models: bool) -> dict[str, Any]:
    report: dict[str, Any] = {"trainer_vs_loop": {}, "cpu_options": {}}
    with tempfile.TemporaryDirectory(prefix="medvol-bench-train-") as tmp:
        for case in sizes.trainer:
            report["trainer_vs_loop"][case.name] = trainer_vs_loop(case, data, Path(tmp))
            ratio = report["trainer_vs_loop"][case.name]["ratio_medvol_to_baseline"]
            log(f"{case.name}: medvol/baseline = {ratio}")
    for options_case in sizes.options:
        report["cpu_options"][options_case.name] = cpu_options(options_case, data, compile_models)
        summary = {
            k: v.get("ratio_to_fp32", "error")
            for k, v in report["cpu_options"][options_case.name]["results"].items()
        }
        log(f"{options_case.name}: ratios to fp32 {summary}")
    report["goals"] = goals(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="narrow models, few steps (smoke test)")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"default {DEFAULT_DATA}")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--only", choices=("trainer", "options"), help="run one part only")
    parser.add_argument("--case", help="run only the trainer or options case of this name")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.only == "trainer":
        sizes = Sizes(trainer=sizes.trainer)
    elif args.only == "options":
        sizes = Sizes(trainer=(), options=sizes.options)
    if args.case:
        sizes = Sizes(
            trainer=tuple(c for c in sizes.trainer if c.name == args.case),
            options=tuple(c for c in sizes.options if c.name == args.case),
        )
    if not (args.data / ADRENAL).is_file():
        log(
            f"{args.data / ADRENAL} not found: this benchmark needs the shared "
            "AdrenalMNIST3D data (--data DIR)"
        )
        return 1
    warnings.filterwarnings("ignore", category=UserWarning)
    started = time.perf_counter()
    machine = environment()
    machine["torch_threads"] = torch.get_num_threads()
    machine["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    machine["mkldnn_bf16_supported"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    machine["cpu_flags_bf16"] = sorted(
        {flag for flag in _cpu_flags() if "bf16" in flag or flag.startswith("amx")}
    )
    with stdout_to_stderr():  # the trainer and libraries print to stdout
        report = run(sizes, args.data, not args.no_compile)
    finish_report(
        {
            "quick": args.quick,
            "sizes": _jsonable(asdict(sizes)),
            "timing": "wall-clock; trainer vs loop: samples/s of each epoch's training pass, median over "
            "the epochs after the first; options: median step time over interleaved rounds after warm-up",
            "environment": machine,
            **report,
        },
        started,
        args.out,
    )
    return 0


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
