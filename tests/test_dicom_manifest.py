"""A researcher's own DICOM series, listed in a CSV manifest: train, evaluate, every row accounted for.

Eight small synthetic CT series (one folder each) with a class per row; a tiny
ResNet trains for one epoch. These tests check that DICOM folders go through
``train`` and ``evaluate --cases`` like NIfTI files, and that every manifest row
is scored or listed among the evaluation's errors, not accuracy.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from medvol import demo
from medvol.cli import main
from tests.dicom_factory import Geometry, write_series

SERIES = 8


def write_manifest(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "image", "class"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier trained on ``cases.csv``, whose images are DICOM series folders."""
    root = tmp_path_factory.mktemp("dicom-classes")
    rows = []
    for number in range(SERIES):
        write_series(root / "scans" / f"s{number}", Geometry(slices=6), base=100 + 50 * number, seed=number)
        rows.append([f"case-{number}", f"scans/s{number}", str(number % 2)])
    write_manifest(root / "cases.csv", rows)
    config = {
        "data": {
            "task": "classification",
            "root": str(root / "cases.csv"),
            "num_classes": 2,
            "input_shape": [8, 8, 6],
            "split": {"method": "kfold", "n_splits": 2, "fold": 0, "seed": 0},
        },
        "normalize": {"type": "ZScore", "params": {"per_scan": True}},
        "model": {"name": "resnet10", "options": demo.resnet_options(widths=4)},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "adam", "lr": 0.003},
        "train": {
            "epochs": 1,
            "batch_size": 4,
            "metric": "auc",
            "metric_mode": "max",
            "amp": "none",
            "device": "cpu",
        },
        "tracking": {"output_dir": str(root / "runs"), "name": "dicom", "tensorboard": False},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(root / "config.yaml")]) == 0
    return root / "runs" / "dicom"


def test_training_on_dicom_folders_uses_every_row(dicom_run: Path) -> None:
    split = json.loads((dicom_run / "split.json").read_text())
    assert sorted(split["train"] + split["val"]) == [f"case-{n}" for n in range(SERIES)]
    assert split["skipped"] == []


def test_evaluate_lists_every_manifest_row_it_cannot_score(
    dicom_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scans = dicom_run.parents[1] / "scans"
    manifest = write_manifest(
        tmp_path / "held-out.csv",
        [
            ["good-0", str(scans / "s0"), "0"],
            ["good-1", str(scans / "s1"), "1"],
            ["../evil", str(scans / "s2"), "0"],  # row 3: an id that could name a path
            ["twice", str(scans / "s3"), "1"],
            ["twice", str(scans / "s4"), "0"],  # row 5 repeats row 4: neither is scored
        ],
    )
    code = main(
        ["evaluate", str(dicom_run), "--cases", str(manifest), "--bootstrap", "20", "--device", "cpu"]
    )
    assert code == 1
    output = capsys.readouterr().out
    assert "unexpected" not in output and "../evil" in output
    summary = json.loads((dicom_run / "evaluation-held-out" / "summary.json").read_text())
    assert summary["n_cases"] == 2 and summary["n_requested"] == 5
    problems = {(e["case_id"], e["problem"].split(":")[1].strip()) for e in summary["errors"]}
    assert (
        problems == {("row 3", "unsafe_case_id"), ("twice", "duplicate_case")} and len(summary["errors"]) == 3
    )
    unsafe = next(e for e in summary["errors"] if e["case_id"] == "row 3")
    assert "'../evil'" in unsafe["problem"] and unsafe["path"] == str(manifest)
