"""``medvol reproduce``: seeds trained, evaluated once, aggregated, compared with published figures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medvol.cli import main
from medvol.errors import MedvolError
from medvol.evaluation import evaluate_run
from medvol.evaluation.classification import choose_threshold, read_classification_cases
from medvol.metrics import accuracy
from medvol.reproduce import available_studies, load_study
from tests.shared_samples import copy_hippocampus_pairs, write_adrenal_subset

TINY_RESNET = [
    "train.epochs=1",
    "train.amp=none",
    "model.options.widths=4",
    "augment=null",
]


@pytest.fixture(scope="module")
def adrenal_tiny(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 training, 24 validation and 40 test cases of AdrenalMNIST3D, both classes in each."""
    path = tmp_path_factory.mktemp("adrenal") / "adrenal_tiny.npz"
    return write_adrenal_subset(shared_data, path, {"train": 64, "val": 24, "test": 40})


def test_every_study_loads_and_its_configs_parse() -> None:
    from medvol.config import load_config

    assert {"adrenalmnist3d", "adrenalmnist3d-64", "hippocampus"} <= set(available_studies())
    for name in available_studies():
        study = load_study(name)
        assert {"cpu", "full"} <= set(study.budgets)
        for config in study.budgets.values():
            load_config(config)
        rows = study.published["rows"]
        assert rows, name
        assert all(any(metric in row for metric in study.metrics) for row in rows), name
        assert all(row["source"] in study.published["sources"] for row in rows), name


def test_unknown_study_and_budget_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MedvolError, match="unknown study 'nope'; available: adrenalmnist3d"):
        load_study("nope")
    assert main(["reproduce", "adrenalmnist3d", "--budget", "huge", "--out", str(tmp_path)]) == 1


def test_classification_study_over_two_seeds_resumes_without_retraining(
    adrenal_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, published = tmp_path / "repro", tmp_path / "docs" / "results" / "adrenal"
    arguments = [
        "reproduce",
        "adrenalmnist3d",
        "--seeds",
        "2",
        "--out",
        str(out),
        "--publish",
        str(published),
    ]
    overrides = [f"data.root={adrenal_tiny}", *TINY_RESNET]
    for override in overrides:
        arguments += ["--set", override]
    assert main(arguments) == 0
    results = json.loads((out / "results.json").read_text())
    assert [run["seed"] for run in results["runs"]] == [0, 1]
    per_seed = [run["metrics"]["auc"]["estimate"] for run in results["runs"]]
    assert results["over_seeds"]["auc"]["mean"] == pytest.approx(np.mean(per_seed))
    assert results["over_seeds"]["auc"]["min"] == min(per_seed) <= 1.0
    for run in results["runs"]:
        folder = Path(run["run_dir"])
        summary = json.loads((folder / "reproduce-test" / "summary.json").read_text())
        assert summary["split"] == "test" and summary["n_cases"] == 40
        assert summary["metrics"]["auc"]["estimate"] == run["metrics"]["auc"]["estimate"]
        assert (
            summary["metrics"]["balanced_accuracy"]["estimate"]
            == run["metrics"]["balanced_accuracy"]["estimate"]
        )
        # The threshold is chosen on the same checkpoint's validation cases and applied to the test cases.
        validation = json.loads((folder / "reproduce-val" / "summary.json").read_text())
        assert validation["split"] == "val" and validation["epoch"] == summary["epoch"]
        _, val_targets, val_probabilities = read_classification_cases(folder / "reproduce-val" / "cases.csv")
        threshold = choose_threshold(val_targets, val_probabilities)
        assert run["val_threshold"]["threshold"] == threshold
        _, targets, probabilities = read_classification_cases(folder / "reproduce-test" / "cases.csv")
        at_threshold = run["metrics"]["accuracy_at_val_threshold"]["estimate"]
        assert at_threshold == pytest.approx(accuracy(targets, probabilities, threshold))
    assert results["baseline"]["class"] == 0 and results["baseline"]["metrics"]["auc"] == 0.5
    assert results["test_evaluations"]["count"] == 2
    table = (out / "results.md").read_text()
    assert "ResNet-18+ACS (published [1]) | 0.8390 | 0.7540 | — | — | — |" in table
    assert "Protocol changed by overrides" in table
    assert "Test split scored 2 times from this output folder" in table
    assert (
        "| majority class (class 0: 32 of 64 training cases), no model | 0.5000 | 0.5000 | 0.5000 |" in table
    )
    copied = sorted(p.relative_to(published).as_posix() for p in published.rglob("*") if p.is_file())
    assert "results.json" in copied and "test-evaluations.json" in copied
    assert "runs/adrenalmnist3d-cpu-seed1/reproduce-val/cases.csv" in copied
    assert "runs/adrenalmnist3d-cpu-seed0/reproduce-test/summary.json" in copied
    assert "configs/adrenalmnist3d-cpu-seed0.yaml" in copied
    assert not any(name.endswith(".pt") or "predictions" in name for name in copied)
    assert sum(p.stat().st_size for p in published.rglob("*")) < 200_000

    # Scoring the test split again outside reproduce is counted, not hidden.
    evaluate_run(results["runs"][0]["run_dir"], split="test")
    checkpoint = Path(results["runs"][0]["run_dir"]) / "checkpoints" / "last.pt"
    before = checkpoint.stat().st_mtime_ns
    capsys.readouterr()
    assert main(arguments) == 0
    shown = capsys.readouterr().out
    assert "already evaluated" in shown
    assert "reproduce adrenalmnist3d: 2/2 seeds (100%)" in shown  # the closing progress line
    assert checkpoint.stat().st_mtime_ns == before
    record = json.loads((out / "test-evaluations.json").read_text())["evaluations"]
    assert [(e["seed"], e["folder"]) for e in record] == [
        (0, "reproduce-test"),
        (1, "reproduce-test"),
        (0, "evaluation-test"),
    ]
    assert "Test split scored 3 time(s)" in (out / "results.md").read_text()


def test_interrupted_seed_is_evaluated_after_training_finishes(adrenal_tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "repro"
    arguments = ["reproduce", "adrenalmnist3d", "--seeds", "1", "--out", str(out)]
    for override in [f"data.root={adrenal_tiny}", *TINY_RESNET]:
        arguments += ["--set", override]
    assert main(arguments) == 0
    evaluation = out / "runs" / "adrenalmnist3d-cpu-seed0" / "reproduce-test"
    shutil.rmtree(evaluation)  # as if stopped between training and evaluation
    assert main(arguments) == 0
    assert (evaluation / "summary.json").is_file()


def test_a_changed_recipe_is_not_mixed_with_earlier_runs(
    adrenal_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "repro"
    arguments = ["reproduce", "adrenalmnist3d", "--seeds", "1", "--out", str(out)]
    for override in [f"data.root={adrenal_tiny}", *TINY_RESNET]:
        arguments += ["--set", override]
    assert main(arguments) == 0
    capsys.readouterr()
    assert main([*arguments, "--set", "optimizer.lr=0.01"]) == 1
    error = capsys.readouterr().err
    assert "adrenalmnist3d-cpu-seed0" in error and "another recipe (changed since: optimizer)" in error


def test_segmentation_study_scores_the_validation_fold(shared_data: Path, tmp_path: Path) -> None:
    data = copy_hippocampus_pairs(shared_data, tmp_path / "hippo", ("001", "004", "006", "007", "008"))
    out = tmp_path / "repro"
    arguments = ["reproduce", "hippocampus", "--seeds", "1", "--out", str(out)]
    for override in (
        f"data.root={data}",
        "data.num_workers=0",
        "data.patch_size=[32,32,32]",
        "train.epochs=1",
        "train.val_every=1",
        "model.options.base_filters=4",
        "model.options.num_levels=3",
    ):
        arguments += ["--set", override]
    assert main(arguments) == 0
    results = json.loads((out / "results.json").read_text())
    summary = json.loads((Path(results["runs"][0]["run_dir"]) / "reproduce-val" / "summary.json").read_text())
    assert summary["split"] == "val" and summary["checkpoint"] == "last" and summary["n_cases"] == 1
    assert set(results["over_seeds"]) == {"dice_1", "dice_2"}
    table = (out / "results.md").read_text()
    assert "nnU-Net 3d_fullres (5-fold CV) (published [1]) | 0.8975 | 0.8807" in table
    assert "| | Dice anterior (1) | Dice posterior (2) |" in table
    assert "Scored: the validation cases, once per seed (1 seed), checkpoint last" in table
    assert "baseline" in results and results["baseline"] is None
    assert not (out / "test-evaluations.json").exists()
