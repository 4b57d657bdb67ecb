"""Short real training runs: a classifier on AdrenalMNIST3D, a segmenter on hippocampus cases.

Tiny models and subsets keep each run to seconds on 2 CPU cores; the checks are
what a user relies on: the loss falls, the run folder is complete, a killed run
resumes to the same weights, and two torchrun ranks match one process.
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
import yaml

from medvol.cli import main
from medvol.engine.train import learning_rate_factor

RUN_FILES = ("config.yaml", "split.json", "fingerprint.json", "environment.json", "metrics.jsonl")


@pytest.fixture(scope="module")
def adrenal_subset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 training and 40 validation cases of AdrenalMNIST3D, half of each class."""
    arrays = dict(np.load(shared_data / "adrenalmnist3d/adrenalmnist3d.npz"))
    subset = {}
    for split, count in (("train", 96), ("val", 40), ("test", 8)):
        labels = arrays[f"{split}_labels"][:, 0]
        chosen = np.sort(np.concatenate([np.flatnonzero(labels == c)[: count // 2] for c in (0, 1)]))
        subset[f"{split}_images"] = arrays[f"{split}_images"][chosen]
        subset[f"{split}_labels"] = arrays[f"{split}_labels"][chosen]
    path = tmp_path_factory.mktemp("adrenal") / "adrenal_subset.npz"
    np.savez(path, **subset)
    return path


def classifier_config(
    root: Path, out: Path, name: str, epochs: int = 3, norm: str = "batch"
) -> dict[str, Any]:
    return {
        "data": {"task": "classification", "root": str(root), "split": {"method": "official"}},
        "model": {
            "name": "resnet10",
            "options": {
                "in_channels": 1,
                "num_classes": 2,
                "stem_kernel": 3,
                "stem_stride": 2,
                "stem_pool": False,
                "widths": 8,
                "norm": norm,
            },
        },
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "adam", "lr": 0.003},
        "train": {"epochs": epochs, "batch_size": 16, "metric": "auc", "metric_mode": "max"},
        "tracking": {"output_dir": str(out), "name": name, "tensorboard": False},
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


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
    assert json.loads((run_dir / "split.json").read_text())["test"] == "not used in training"


def test_killed_run_resumes_to_the_same_weights(adrenal_subset: Path, tmp_path: Path) -> None:
    reference = classifier_config(adrenal_subset, tmp_path / "runs", "whole", epochs=3)
    assert main(["train", str(write_config(tmp_path / "whole.yaml", reference))]) == 0

    killed = classifier_config(adrenal_subset, tmp_path / "runs", "killed", epochs=3)
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


def test_two_torchrun_ranks_match_one_process(adrenal_subset: Path, tmp_path: Path) -> None:
    """Same global batch: DDP's averaged gradients equal one process's.

    Group norm (no batch statistics) and SGD (updates linear in the gradient;
    Adam would amplify float rounding in near-zero gradients into sign flips).
    """
    single = classifier_config(adrenal_subset, tmp_path / "runs", "single", epochs=2, norm="group")
    ddp = classifier_config(adrenal_subset, tmp_path / "runs", "ddp", epochs=2, norm="group")
    for config in (single, ddp):
        config["optimizer"] = {"name": "sgd", "lr": 0.01, "momentum": 0.9}
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
        torch.testing.assert_close(two["model"][name], tensor, rtol=1e-3, atol=1e-4, msg=name)
    single_metrics, ddp_metrics = metrics(tmp_path / "runs" / "single"), metrics(tmp_path / "runs" / "ddp")
    assert ddp_metrics[-1]["val_cases"] == 40  # every validation case once, none twice
    assert ddp_metrics[-1]["val_auc"] == pytest.approx(single_metrics[-1]["val_auc"], abs=1e-3)


def test_segmenter_on_hippocampus_cases(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "msd-hippocampus"
    data = tmp_path / "hippo"
    for case in ("001", "003", "004", "006", "007", "008"):
        for kind in ("images", "labels"):
            (data / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(source / kind / f"hippocampus_{case}.nii.gz", data / kind)
    config = {
        "data": {"task": "segmentation", "root": str(data), "num_classes": 3, "patch_size": [32, 32, 32]},
        "preprocess": {"spacing_mm": [1.0, 1.0, 1.0]},
        "model": {
            "name": "unet",
            "options": {"in_channels": 1, "num_classes": 3, "base_filters": 4, "num_levels": 3},
        },
        "loss": {"name": "dice_ce"},
        "optimizer": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 3, "batch_size": 2, "metric": "dice", "metric_mode": "max"},
        "tracking": {"output_dir": str(tmp_path / "runs"), "name": "seg", "tensorboard": False},
    }
    assert main(["train", str(write_config(tmp_path / "seg.yaml", config))]) == 0
    run_dir = tmp_path / "runs" / "seg"
    history = metrics(run_dir)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert {"val_dice_1", "val_dice_2", "val_dice"} <= set(history[-1])
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 6 and not set(split["train"]) & set(split["val"])
    assert (run_dir / "normalizer.json").is_file()
    assert len(list((run_dir / "cache").iterdir())) == 6  # every case preprocessed once


def test_learning_rate_schedules() -> None:
    from medvol.config import parse_config

    base = {
        "data": {"task": "classification", "root": "x.npz"},
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
    config = classifier_config(adrenal_subset, tmp_path / "runs", "stale", epochs=6, norm="group")
    config["optimizer"]["lr"] = 1e-12  # weights, and with group norm the validation AUC, never change
    config["train"]["early_stop_patience"] = 2
    assert main(["train", str(write_config(tmp_path / "stale.yaml", config))]) == 0
    assert len(metrics(tmp_path / "runs" / "stale")) == 3  # epoch 1 sets the best, 2 and 3 do not improve
    assert "early stop" in capsys.readouterr().out
