"""Short real training runs: a classifier on AdrenalMNIST3D, a segmenter on hippocampus cases.

Tiny models and subsets keep each run to seconds on 2 CPU cores; the checks are
what a user relies on: the loss falls, the run folder is complete, a killed run
resumes to the same weights, and two torchrun ranks match one process.

Tests that compare numbers exactly (resume, torchrun, early stopping on an
unchanging metric) pin fp32 and the default memory layout with
:func:`exact`, so that they test what they say whatever ``train.amp: auto``
resolves to on the machine running them.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medvol import demo
from medvol.cli import main
from medvol.config import parse_config
from medvol.engine import precision
from medvol.engine.inference import classify, load_trained
from medvol.engine.precision import (
    cpu_bf16_self_check,
    cpu_bf16_verdict,
    native_bf16,
    resolve_amp,
    resolve_precision,
)
from medvol.engine.torch_network import TorchNetwork
from medvol.engine.train import learning_rate_factor
from medvol.errors import MedvolError
from medvol.models import create_model
from tests.shared_samples import copy_hippocampus_pairs, write_adrenal_subset, write_config

RUN_FILES = ("config.yaml", "split.json", "fingerprint.json", "environment.json", "metrics.jsonl")


@pytest.fixture(scope="module")
def adrenal_subset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 training and 40 validation cases of AdrenalMNIST3D, half of each class."""
    path = tmp_path_factory.mktemp("adrenal") / "adrenal_subset.npz"
    return write_adrenal_subset(shared_data, path, {"train": 96, "val": 40, "test": 8})


def classifier_config(
    root: Path, out: Path, name: str, epochs: int = 3, norm: str = "batch"
) -> dict[str, Any]:
    """The shared tiny ResNet-10 (width 8, stride-2 stem) at batch 16, Adam 3e-3."""
    return demo.medmnist_classifier(root, epochs=epochs, output_dir=out, name=name, norm=norm)


def exact(config: dict[str, Any]) -> dict[str, Any]:
    """Pin fp32 and contiguous tensors, for tests that compare weights or losses exactly."""
    config["train"].update({"amp": "none", "channels_last": False})
    return config


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_classifier_learns_and_writes_a_complete_run(adrenal_subset: Path, tmp_path: Path) -> None:
    config = classifier_config(adrenal_subset, tmp_path / "runs", "clf", epochs=4)
    config["tracking"]["tensorboard"] = True
    assert main(["train", str(write_config(tmp_path / "clf.yaml", config))]) == 0
    run_dir = tmp_path / "runs" / "clf"
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").iterdir())
    history = metrics(run_dir)
    assert [record["epoch"] for record in history] == [0, 1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(0.0 <= record["val_auc"] <= 1.0 for record in history)
    assert history[0]["val_cases"] == 40
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    best_epoch = max(history, key=lambda r: r["val_auc"])["epoch"]
    assert best["progress"]["best_epoch"] == best_epoch
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["packages"]["torch"] == torch.__version__
    # the defaults (amp auto, channels_last auto) are recorded resolved, for this machine
    native = native_bf16(torch.device("cpu"))[0]
    assert environment["precision"]["amp"] == ("bf16" if native else "none")
    assert environment["precision"]["channels_last"] is True  # a ResNet
    assert "amp auto" in environment["precision"]["reason"]
    assert all(r["seconds"] >= r["checkpoint_seconds"] >= 0 for r in history)
    assert json.loads((run_dir / "split.json").read_text())["test"] == "not used in training"


@pytest.mark.parametrize("where", ["batch", "sample"])
def test_killed_run_resumes_to_the_same_weights(adrenal_subset: Path, tmp_path: Path, where: str) -> None:
    """With augmentation either way (``augment.where``) and MixUp: the resumed run draws what the
    whole one did."""

    def augmented(name: str) -> dict[str, Any]:
        config = exact(classifier_config(adrenal_subset, tmp_path / "runs", name, epochs=3))
        config["augment"] = {"flip_axes": [0, 1, 2], "affine_prob": 0.5, "noise_prob": 0.3, "where": where}
        config["augment"] |= {"mix": "mixup", "mix_prob": 0.5}
        return config

    reference = augmented("whole")
    assert main(["train", str(write_config(tmp_path / "whole.yaml", reference))]) == 0

    killed = augmented("killed")
    path = write_config(tmp_path / "killed.yaml", killed)
    process = subprocess.Popen([sys.executable, "-m", "medvol", "train", str(path)], start_new_session=True)
    metrics_path = tmp_path / "runs" / "killed" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if metrics_path.is_file() and metrics_path.read_text().count("\n") >= 1:
            os.killpg(process.pid, signal.SIGKILL)  # mid-way through the second epoch
            break
        time.sleep(0.05)
    process.wait()
    assert len(metrics(tmp_path / "runs" / "killed")) < 3, "the run finished before it could be killed"
    assert main(["train", str(path), "--resume"]) == 0

    whole = torch.load(tmp_path / "runs" / "whole" / "checkpoints" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "runs" / "killed" / "checkpoints" / "last.pt", weights_only=True)
    for name, tensor in whole["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=0, atol=0, msg=name)
    losses = [r["train_loss"] for r in metrics(tmp_path / "runs" / "killed")]
    assert losses == [r["train_loss"] for r in metrics(tmp_path / "runs" / "whole")]
    # epoch 1 was logged before the kill: its full time (with the checkpoint write) survives the resume
    assert "checkpoint_seconds" in metrics(tmp_path / "runs" / "killed")[0]


def test_resume_and_rerun_refusals(
    adrenal_subset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(
        tmp_path / "c.yaml", classifier_config(adrenal_subset, tmp_path / "runs", "c", epochs=1)
    )
    assert main(["train", str(path), "--resume"]) == 1
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["train", str(path)]) == 0
    assert main(["train", str(path)]) == 1
    assert "run folder exists" in capsys.readouterr().err


def test_a_start_that_failed_before_its_first_checkpoint_does_not_block_its_name(
    adrenal_subset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = classifier_config(adrenal_subset, tmp_path / "runs", "first", epochs=1)
    config["train"].update({"metric": "dice", "metric_mode": "max"})  # not a classifier's metric
    path = write_config(tmp_path / "first.yaml", config)
    assert main(["train", str(path)]) == 1  # fails at the first validation, before any checkpoint
    assert "train.metric 'dice'" in capsys.readouterr().err
    run_dir = tmp_path / "runs" / "first"
    assert (run_dir / "config.yaml").is_file() and not (run_dir / "checkpoints" / "last.pt").exists()

    assert main(["train", str(path), "--set", "train.metric=auc", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "stopped before its first checkpoint" in err
    assert "without --resume" in err
    assert main(["train", str(path), "--set", "train.metric=auc"]) == 0
    assert "starting the run afresh" in capsys.readouterr().out
    assert [r["epoch"] for r in metrics(run_dir)] == [0]
    assert "auc" in (run_dir / "config.yaml").read_text()
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_resume_refuses_settings_other_than_the_runs_own(
    adrenal_subset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(
        tmp_path / "r.yaml", classifier_config(adrenal_subset, tmp_path / "runs", "r", epochs=1)
    )
    assert main(["train", str(path)]) == 0
    run_dir = tmp_path / "runs" / "r"
    capsys.readouterr()
    # a wider model would not load the checkpoint; more epochs would not be what config.yaml says
    changed = ["--set", "model.options.widths=16", "--set", "train.epochs=2"]
    assert main(["train", str(path), "--resume", *changed]) == 1
    err = capsys.readouterr().err
    assert f"{run_dir / 'config.yaml'}: --resume continues the run as this file configures it" in err
    assert "model.options.widths: 8 → 16" in err and "train.epochs: 1 → 2" in err
    assert "unexpected" not in err
    assert [r["epoch"] for r in metrics(run_dir)] == [0]
    # the machine and the data's place may change
    moved = [
        "--set",
        "train.device=cpu",
        "--set",
        "data.num_workers=0",
        "--set",
        "tracking.tensorboard=false",
    ]
    assert main(["train", str(path), "--resume", *moved]) == 0


def test_a_folder_without_a_checkpoint_keeps_files_medvol_did_not_write(
    adrenal_subset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "runs" / "mine"
    run_dir.mkdir(parents=True)
    # the user's own experiment config, kept where the run will be
    path = write_config(
        run_dir / "config.yaml", classifier_config(adrenal_subset, tmp_path / "runs", "mine", epochs=1)
    )
    written = path.read_text()
    assert main(["train", str(path)]) == 1
    assert "was not made by `medvol train`" in capsys.readouterr().err
    assert path.read_text() == written
    # a start that failed (checkpoints/ but no checkpoint), with a file of the user's beside it
    (run_dir / "checkpoints").mkdir()
    (run_dir / "notes.txt").write_text("my notes")
    assert main(["train", str(path)]) == 1
    err = capsys.readouterr().err
    assert "notes.txt" in err and "move them away or choose another tracking.name" in err
    assert (run_dir / "notes.txt").read_text() == "my notes"
    assert path.read_text() == written


def test_two_torchrun_ranks_match_one_process(adrenal_subset: Path, tmp_path: Path) -> None:
    """Same global batch: DDP's averaged gradients equal one process's.

    Group norm (no batch statistics) and SGD (updates linear in the gradient;
    Adam would amplify float rounding in near-zero gradients into sign flips).
    """
    single = classifier_config(adrenal_subset, tmp_path / "runs", "single", epochs=2, norm="group")
    ddp = classifier_config(adrenal_subset, tmp_path / "runs", "ddp", epochs=2, norm="group")
    for config in (single, ddp):
        config["optimizer"] = {"name": "sgd", "lr": 0.01, "momentum": 0.9}
        config["train"]["batch_size"] = 48  # 2 steps an epoch: little room for rounding to grow
        exact(config)
    assert main(["train", str(write_config(tmp_path / "single.yaml", single))]) == 0
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    result = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "medvol",
            "train",
            str(write_config(tmp_path / "ddp.yaml", ddp)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one = torch.load(tmp_path / "runs" / "single" / "checkpoints" / "last.pt", weights_only=True)
    two = torch.load(tmp_path / "runs" / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    for name, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    single_metrics, ddp_metrics = metrics(tmp_path / "runs" / "single"), metrics(tmp_path / "runs" / "ddp")
    assert ddp_metrics[-1]["val_cases"] == 40  # every validation case once, none twice
    assert ddp_metrics[-1]["val_auc"] == pytest.approx(single_metrics[-1]["val_auc"], abs=1e-3)


def test_segmenter_on_hippocampus_cases(shared_data: Path, tmp_path: Path) -> None:
    data = copy_hippocampus_pairs(shared_data, tmp_path / "hippo", ("001", "003", "004", "006", "007", "008"))
    config = demo.hippocampus_segmenter(data, epochs=3, output_dir=tmp_path / "runs", name="seg")
    assert main(["train", str(write_config(tmp_path / "seg.yaml", config))]) == 0
    run_dir = tmp_path / "runs" / "seg"
    history = metrics(run_dir)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert {"val_dice_1", "val_dice_2", "val_dice"} <= set(history[-1])
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 6 and not set(split["train"]) & set(split["val"])
    assert (run_dir / "normalizer.json").is_file()
    assert len(list((run_dir / "cache").iterdir())) == 6  # every case preprocessed once


def held_out_hippocampus(folder: Path) -> tuple[Path, Path]:
    """A manifest of the 16 bundled hippocampus cases and a split: train on 12, validate on the 4 held out."""
    from medvol.data.splits import save_folds

    rows, ids = [], {}
    for part in ("train", "holdout"):
        images = sorted((demo.sample("hippocampus") / part / "images").glob("*.nii.gz"))
        ids[part] = [image.name.removesuffix(".nii.gz") for image in images]
        rows += [
            f"{case},{image},{image.parent.parent / 'labels' / image.name}"
            for case, image in zip(ids[part], images, strict=True)
        ]
    manifest = folder / "cases.csv"
    folder.mkdir(parents=True, exist_ok=True)
    manifest.write_text("case_id,image,label\n" + "\n".join(rows) + "\n")
    return manifest, save_folds([{"train": ids["train"], "val": ids["holdout"]}], folder / "split.json")


def test_segmenter_reaches_a_dice_floor_on_held_out_cases(tmp_path: Path) -> None:
    """60 epochs of a small UNet on 12 bundled cases segment 4 unseen ones with Dice above 0.75.

    Measured on 2 CPU cores (fp32): mean Dice 0.862 / 0.853 / 0.861 for seeds 0, 1, 2 (each
    class 0.83 or more), about 8 s; after 10 epochs it is 0.34, so the floor catches a
    model, loss, schedule, sampling or validation that stops learning, not noise.
    """
    manifest, split = held_out_hippocampus(tmp_path / "data")
    config = demo.hippocampus_segmenter(
        manifest,
        epochs=60,
        output_dir=tmp_path / "runs",
        name="floor",
        base_filters=8,
        patch_size=(32, 48, 32),
        split={"method": "file", "file": str(split), "fold": 0},
        batch_size=4,
    )
    config["normalize"] = {"type": "ZScore", "params": {"per_scan": True}}
    config["train"]["val_every"] = 60  # validate once, at the end: the held-out cases choose nothing
    exact(config)
    assert main(["train", str(write_config(tmp_path / "floor.yaml", config))]) == 0
    (last,) = [record for record in metrics(tmp_path / "runs" / "floor") if "val_dice" in record]
    assert last["val_cases"] == 4
    assert last["val_dice"] > 0.75, last
    assert min(last["val_dice_1"], last["val_dice_2"]) > 0.7, last


def test_learning_rate_schedules() -> None:
    from medvol.config import parse_config

    base = {
        "data": {"task": demo.MEDMNIST_TASK, "root": "x.npz"},
        "model": {"name": "resnet10"},
        "loss": {"name": "cross_entropy"},
    }
    multistep = parse_config(
        {**base, "train": {"epochs": 100}, "schedule": {"name": "multistep", "milestones": [50, 75]}}
    )
    assert [learning_rate_factor(multistep, e) for e in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    cosine = parse_config(
        {**base, "train": {"epochs": 10}, "schedule": {"name": "cosine", "warmup_epochs": 2}}
    )
    factors = [learning_rate_factor(cosine, e) for e in range(10)]
    assert factors[0] < factors[1] < factors[2] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(factors[2:]))


def test_mlflow_logging_to_a_local_store(adrenal_subset: Path, tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    config = classifier_config(adrenal_subset, tmp_path / "runs", "tracked", epochs=2)
    config["tracking"]["mlflow"] = True
    assert main(["train", str(write_config(tmp_path / "tracked.yaml", config))]) == 0
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'tracked' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("medvol")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["model.name"] == "resnet10"
    assert run.data.params["train.epochs"] == "2"
    history = client.get_metric_history(run.info.run_id, "val_auc")
    assert [m.step for m in history] == [0, 1]
    assert history[-1].value == pytest.approx(metrics(tmp_path / "runs" / "tracked")[-1]["val_auc"])


def test_early_stopping_ends_a_run_that_stops_improving(
    adrenal_subset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = exact(classifier_config(adrenal_subset, tmp_path / "runs", "stale", epochs=6, norm="group"))
    config["optimizer"]["lr"] = 1e-12  # weights, and with group norm the validation AUC, never change
    config["train"]["early_stop_patience"] = 2
    assert main(["train", str(write_config(tmp_path / "stale.yaml", config))]) == 0
    assert len(metrics(tmp_path / "runs" / "stale")) == 3  # epoch 1 sets the best, 2 and 3 do not improve
    assert "early stop" in capsys.readouterr().out


BASE = {
    "data": {"task": demo.MEDMNIST_TASK, "root": "x.npz"},
    "model": {"name": "resnet10"},
    "loss": {"name": "cross_entropy"},
}


def test_auto_precision_is_bf16_only_where_it_is_native(monkeypatch: pytest.MonkeyPatch) -> None:
    # CPUs: oneDNN's bf16 check also passes on AVX-512 without bf16 instructions (emulated, slow)
    x86 = {"architecture": "x86_64", "avx512_bw": True}
    assert cpu_bf16_verdict(True, {**x86, "avx512_bf16": True}, "x86_64")[0]
    assert cpu_bf16_verdict(True, {**x86, "amx_bf16": True}, "x86_64")[0]
    emulated = cpu_bf16_verdict(True, x86, "x86_64")
    assert not emulated[0] and "emulate" in emulated[1]
    assert not cpu_bf16_verdict(False, {**x86, "avx512_bf16": True}, "x86_64")[0]
    assert cpu_bf16_verdict(True, {"architecture": "arm64", "bf16": True}, "aarch64")[0]
    assert not cpu_bf16_verdict(False, {"architecture": "arm64"}, "aarch64")[0]
    # this machine: auto follows what the CPU has
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu)[0] == ("bf16" if native_bf16(cpu)[0] else "none")
    # native bf16 whose convolution gradients fail the self-check is not used by auto
    if torch.backends.mkldnn.is_available():
        monkeypatch.setattr(precision, "cpu_bf16_verdict", lambda *args: (True, "native"))
        for check, expected in (((True, "fine"), "bf16"), ((False, "wrong gradients"), "none")):
            monkeypatch.setattr(precision, "cpu_bf16_self_check", lambda check=check: check)
            precision._cpu_native_bf16.cache_clear()
            amp, reason = resolve_amp("auto", cpu)
            assert amp == expected and ("wrong gradients" in reason) == (expected == "none")
        precision._cpu_native_bf16.cache_clear()
        monkeypatch.undo()
    # GPUs: native bf16 from compute capability 8.0 (Ampere)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert resolve_amp("auto", torch.device("cuda", 0))[0] == "none"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert resolve_amp("auto", torch.device("cuda", 0))[0] == "bf16"
    assert resolve_amp("auto", torch.device("mps"))[0] == "none"
    # explicit settings are kept
    assert resolve_amp("none", cpu)[0] == "none"
    assert resolve_amp("bf16", cpu)[0] == "bf16"
    assert resolve_amp("fp16", torch.device("cuda", 0))[0] == "fp16"


def test_fp16_off_cuda_is_refused_with_a_clear_message(
    adrenal_subset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(MedvolError, match="fp16 needs a CUDA device, but this run is on cpu"):
        resolve_amp("fp16", torch.device("cpu"))
    with pytest.raises(MedvolError, match=r"train: .*amp: fp16 needs a CUDA device, but device is cpu"):
        parse_config({**BASE, "train": {"amp": "fp16", "device": "cpu"}})
    # device auto on a CPU-only machine: refused before the run folder is created
    config = classifier_config(adrenal_subset, tmp_path / "runs", "half", epochs=1)
    config["train"]["amp"] = "fp16"
    if torch.cuda.is_available():
        config["train"]["device"] = "cpu"  # refused by the config check instead; same message
    assert main(["train", str(write_config(tmp_path / "half.yaml", config))]) == 1
    assert "fp16 needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "half").exists()
    # inference of a run trained in fp16 on a GPU falls back to fp32 on a CPU
    model = create_model("resnet10", num_classes=2, widths=4)
    assert resolve_precision("fp16", "auto", torch.device("cpu"), model, strict=False).amp == "none"


def test_bf16_self_check_passes_a_correct_convolution() -> None:
    """Without oneDNN, torch's own bf16 convolution is right: the check must not fail everything."""
    cpu_bf16_self_check.cache_clear()
    try:
        with torch.backends.mkldnn.flags(enabled=False):
            correct, why = cpu_bf16_self_check()
            assert correct, why
    finally:
        cpu_bf16_self_check.cache_clear()
    correct, why = cpu_bf16_self_check()  # this machine's oneDNN: either answer, explained
    if not correct:
        assert "bf16 training can get wrong or NaN gradients" in why
        assert "WARNING" in resolve_amp("bf16", torch.device("cpu"))[1]


def test_channels_last_auto_is_on_for_resnets_only() -> None:
    cpu = torch.device("cpu")
    resnet = create_model("resnet10", num_classes=2, widths=4)
    unet = create_model("unet", **demo.unet_options())
    assert resolve_precision("none", "auto", cpu, resnet).channels_last
    assert not resolve_precision("none", "auto", cpu, unet).channels_last
    assert not resolve_precision("none", False, cpu, resnet).channels_last
    assert resolve_precision("none", True, cpu, unet).channels_last
    assert parse_config({**BASE, "train": {"channels_last": True}}).train.channels_last is True
    with pytest.raises(MedvolError, match=r"train\.channels_last: Input should be 'auto', True or False"):
        parse_config({**BASE, "train": {"channels_last": "sometimes"}})


def test_bf16_classifier_trains_and_infers_as_it_trained(adrenal_subset: Path, tmp_path: Path) -> None:
    """Explicit bf16 trains a ResNet whose grids (28, 14, 7, 4) avoid the shapes the self-check tests."""
    config = classifier_config(adrenal_subset, tmp_path / "runs", "bf16", epochs=4)
    config["model"]["options"].update({"stem_stride": 1, "widths": 4})
    config["train"].update({"amp": "bf16", "channels_last": "auto"})
    assert main(["train", str(write_config(tmp_path / "bf16.yaml", config))]) == 0
    run_dir = tmp_path / "runs" / "bf16"
    history = metrics(run_dir)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(0.0 <= record["val_auc"] <= 1.0 for record in history)
    recorded = json.loads((run_dir / "environment.json").read_text())["precision"]
    assert (recorded["amp"], recorded["channels_last"]) == ("bf16", True)
    assert recorded["reason"].startswith("amp bf16 as configured")
    assert recorded["reason"].endswith("; channels_last auto: on for a 3D ResNet classifier")
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["precision"] == recorded
    # inference resolves the run's settings the same way, on its own device
    trained = load_trained(run_dir, device="cpu")
    network = trained.network
    assert isinstance(network, TorchNetwork)
    assert network.precision == resolve_precision("bf16", "auto", torch.device("cpu"), network.module)
    conv = next(m.weight for m in network.module.modules() if isinstance(m, nn.Conv3d) and m.in_channels > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    images = np.load(adrenal_subset)["val_images"][:8, None].astype(np.float32) / 255.0
    probabilities = classify(trained, images)
    assert probabilities.shape == (8, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_epoch_seconds_include_the_checkpoint_write(
    adrenal_subset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medvol.engine.train as train_module

    real_save = train_module.save_checkpoint

    def slow_save(state: dict[str, Any], path: str | Path) -> Path:
        time.sleep(0.25)
        return real_save(state, path)

    monkeypatch.setattr(train_module, "save_checkpoint", slow_save)
    config = classifier_config(adrenal_subset, tmp_path / "runs", "timed", epochs=1)
    assert main(["train", str(write_config(tmp_path / "timed.yaml", config))]) == 0
    (record,) = metrics(tmp_path / "runs" / "timed")
    assert record["checkpoint_seconds"] >= 0.25
    assert record["seconds"] >= record["checkpoint_seconds"] + 0.001  # and the training before it


def test_epoch_line_gives_the_time_left_for_the_run() -> None:
    from medvol.config import parse_config
    from medvol.engine.train import _epoch_line

    config = parse_config(classifier_config(Path("data.npz"), Path("runs"), "eta", epochs=10))
    record = {"epoch": 3, "train_loss": 0.5, "lr": 1e-3, "samples_per_s": 10.0, "data_wait_share": 0.1}
    assert _epoch_line({**record, "seconds": 30.0}, config).endswith("30.0s  ETA 3m00s")
    assert "ETA" not in _epoch_line({**record, "epoch": 9, "seconds": 30.0}, config)


def test_eta_estimates_training_and_validation_epochs_apart() -> None:
    from medvol.config import parse_config
    from medvol.engine.train import _epoch_line, remaining_seconds

    # 50 epochs, validation every 25: training epochs take 1 s, a validation 26 s more.
    record = {"lr": 1e-3, "train_loss": 0.5, "samples_per_s": 10.0, "data_wait_share": 0.1}
    history = [{**record, "epoch": e, "seconds": 1.0} for e in range(24)]
    history.append({**record, "epoch": 24, "seconds": 27.0, "validation_seconds": 26.0, "val_auc": 0.7})
    # 25 training epochs and one validation (the last epoch) are left: 25 × 1 s + 26 s.
    assert remaining_seconds(history, epochs=50, val_every=25) == pytest.approx(51.0)
    settings = classifier_config(Path("data.npz"), Path("runs"), "eta", epochs=50)
    settings["train"]["val_every"] = 25
    config = parse_config(settings)
    assert _epoch_line(history[-1], config, history).endswith("27.0s  ETA 51s")
    # Logs written before validation_seconds: a validation epoch's time beyond the mean training epoch.
    old = [{k: v for k, v in r.items() if k != "validation_seconds"} for r in history]
    assert remaining_seconds(old, epochs=50, val_every=25) == pytest.approx(51.0)
    # val_every 10 after epoch 25: validations at epochs 30, 40, 50.
    assert remaining_seconds(history, epochs=50, val_every=10) == pytest.approx(25 + 3 * 26.0)
    assert remaining_seconds(history, epochs=25, val_every=25) == 0.0
