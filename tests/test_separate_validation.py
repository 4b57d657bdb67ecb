"""Training on every case of one folder, validating on another (``split.method: separate``).

A researcher with a fixed validation or external set trains on all of
``data.root`` and validates on ``split.val_root``: both sides go through
``medvol index``'s checks, a case id, a patient id or an image shared by both
sides is refused as a leak, ``split.json`` records both sides, and
``medvol evaluate RUN`` scores the validation set where it lives.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import medvol
from medvol.config import dump_config, parse_config
from medvol.demo import hippocampus_segmenter, sample_ct_series
from medvol.engine.distributed import Runtime
from medvol.engine.run_folder import RunFolder
from medvol.engine.run_start import check_resumed_config
from medvol.engine.train import train
from medvol.errors import MedvolError
from medvol.evaluation import evaluate_run
from medvol.tasks import task_for

HIPPOCAMPUS = Path(str(medvol.sample("hippocampus")))
TRAIN_IDS = sorted(p.name.removesuffix(".nii.gz") for p in (HIPPOCAMPUS / "train" / "images").iterdir())
HOLDOUT_IDS = sorted(p.name.removesuffix(".nii.gz") for p in (HIPPOCAMPUS / "holdout" / "images").iterdir())


def _segmenter(root: Path, val_root: Path, out: Path, **data: Any) -> dict[str, Any]:
    config = hippocampus_segmenter(
        root,
        epochs=1,
        output_dir=out,
        base_filters=4,
        num_levels=3,
        patch_size=(32, 32, 32),
        split={"method": "separate", "val_root": str(val_root)},
        batch_size=4,
    )
    config["train"]["device"] = "cpu"
    config["tracking"]["tensorboard"] = False
    config["data"].update(data)
    return config


def _build(config: dict[str, Any], out: Path) -> Any:
    parsed = parse_config(config)
    return task_for(parsed).build_data(Runtime(torch.device("cpu")), RunFolder(out / "run"))


def test_train_on_all_cases_validate_and_evaluate_on_another_folder(tmp_path: Path) -> None:
    config = _segmenter(HIPPOCAMPUS / "train", HIPPOCAMPUS / "holdout", tmp_path)
    run = RunFolder(train(parse_config(config)))
    split = json.loads(run.split.read_text())
    assert split["method"] == "separate"
    assert split["train"] == TRAIN_IDS  # every usable case of data.root trains
    assert split["val"] == HOLDOUT_IDS
    assert split["root"] == str(HIPPOCAMPUS / "train")
    assert split["val_root"] == str(HIPPOCAMPUS / "holdout")
    fingerprint = json.loads(run.fingerprint.read_text())
    assert fingerprint["usable_pairs"] == len(TRAIN_IDS)
    assert fingerprint["validation"]["usable_pairs"] == len(HOLDOUT_IDS)
    epoch = json.loads(run.metrics.read_text().splitlines()[0])
    assert epoch["val_dice"] is not None  # validated on the holdout cases

    evaluation = evaluate_run(run.path, out=tmp_path / "evaluation", n_resamples=50, device="cpu")
    summary = evaluation.summary
    assert summary["errors"] == []  # the val ids were found (in val_root, not data.root)
    assert summary["n_cases"] == len(HOLDOUT_IDS)
    assert summary["cases_root"] == str(HIPPOCAMPUS / "holdout")
    scored = [row["case_id"] for row in csv.DictReader((tmp_path / "evaluation" / "cases.csv").open())]
    assert sorted(set(scored)) == HOLDOUT_IDS  # one row per case and class


def _copy_case(source: Path, case_id: str, target: Path, new_id: str) -> None:
    for part in ("images", "labels"):
        (target / part).mkdir(parents=True, exist_ok=True)
        shutil.copy(source / part / f"{case_id}.nii.gz", target / part / f"{new_id}.nii.gz")


def test_a_case_id_on_both_sides_is_a_leak(tmp_path: Path) -> None:
    val = tmp_path / "val"
    _copy_case(HIPPOCAMPUS / "holdout", HOLDOUT_IDS[0], val, TRAIN_IDS[3])  # another scan, a training id
    with pytest.raises(MedvolError, match=rf"case id.*{TRAIN_IDS[3]}.*leak") as raised:
        _build(_segmenter(HIPPOCAMPUS / "train", val, tmp_path), tmp_path)
    assert raised.value.path == val


def test_the_same_scan_under_another_id_is_a_leak(tmp_path: Path) -> None:
    val = tmp_path / "val"
    _copy_case(HIPPOCAMPUS / "holdout", HOLDOUT_IDS[0], val, HOLDOUT_IDS[0])
    _copy_case(HIPPOCAMPUS / "train", TRAIN_IDS[5], val, "renamed_copy")
    with pytest.raises(MedvolError, match=rf"same image content.*{TRAIN_IDS[5]} = renamed_copy.*leak"):
        _build(_segmenter(HIPPOCAMPUS / "train", val, tmp_path), tmp_path)


def _manifest(path: Path, rows: list[tuple[str, Path, str, str]], column: str = "label") -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "image", column, "patient_id"])
        writer.writerows([case_id, str(image), value, patient] for case_id, image, value, patient in rows)
    return path


def test_a_patient_on_both_sides_is_a_leak(tmp_path: Path) -> None:
    def row(folder: str, case_id: str, patient: str) -> tuple[str, Path, str, str]:
        base = HIPPOCAMPUS / folder
        return (
            case_id,
            base / "images" / f"{case_id}.nii.gz",
            str(base / "labels" / f"{case_id}.nii.gz"),
            patient,
        )

    train_csv = _manifest(tmp_path / "train.csv", [row("train", c, f"p{i}") for i, c in enumerate(TRAIN_IDS)])
    val_rows = [row("holdout", HOLDOUT_IDS[0], "p3"), row("holdout", HOLDOUT_IDS[1], "q1")]
    val_csv = _manifest(tmp_path / "val.csv", val_rows)
    with pytest.raises(MedvolError, match=r"1 patient id\(s\).*leak") as raised:
        _build(_segmenter(train_csv, val_csv, tmp_path), tmp_path)
    assert "p3" not in str(raised.value)  # patient ids are not repeated in messages


def test_an_unusable_validation_set_is_refused_with_its_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "labels").mkdir()
    with pytest.raises(MedvolError, match=r"no usable cases in split\.val_root") as raised:
        _build(_segmenter(HIPPOCAMPUS / "train", empty, tmp_path), tmp_path)
    assert raised.value.path == empty


def test_val_root_and_method_separate_go_together() -> None:
    config = _segmenter(HIPPOCAMPUS / "train", HIPPOCAMPUS / "holdout", Path("runs"))
    config["data"]["split"] = {"method": "separate"}
    with pytest.raises(MedvolError, match=r"set split\.val_root"):
        parse_config(config)
    config["data"]["split"] = {"method": "separate", "val_root": "holdout", "fold": 2, "seed": 1}
    with pytest.raises(MedvolError, match=r"split\.fold, split\.seed not used by split\.method: separate"):
        parse_config(config)
    config["data"]["split"] = {"method": "nnunet", "val_root": str(HIPPOCAMPUS / "holdout")}
    with pytest.raises(
        MedvolError, match=r"split\.val_root is the validation set of split\.method: separate"
    ):
        parse_config(config)


def test_a_classifier_counts_the_classes_of_both_sides(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def row(folder: str, case_id: str, target: int) -> tuple[str, Path, str, str]:
        return case_id, HIPPOCAMPUS / folder / "images" / f"{case_id}.nii.gz", str(target), ""

    train_csv = _manifest(
        tmp_path / "train.csv", [row("train", c, i % 2) for i, c in enumerate(TRAIN_IDS)], "class"
    )
    val_csv = _manifest(tmp_path / "val.csv", [row("holdout", c, 1) for c in HOLDOUT_IDS], "class")
    config = {
        "data": {
            "task": "classification",
            "root": str(train_csv),
            "split": {"method": "separate", "val_root": str(val_csv)},
            "num_classes": 2,
            "input_shape": [16, 16, 16],
        },
        "model": {"name": "resnet10", "options": {"in_channels": 1, "num_classes": 2}},
        "loss": {"name": "cross_entropy"},
        "tracking": {"output_dir": str(tmp_path), "tensorboard": False},
    }
    data = _build(config, tmp_path)
    assert data.split["train"] == TRAIN_IDS
    assert data.split["val"] == HOLDOUT_IDS
    assert data.fingerprint["class_counts"] == {
        "all": {"0": 6, "1": 10},
        "train": {"0": 6, "1": 6},
        "val": {"0": 0, "1": 4},
    }
    assert [int(data.val[i]["label"]) for i in range(len(data.val))] == [1, 1, 1, 1]
    assert f"{val_csv} has no case of class(es) 0: the validation AUC is undefined" in caplog.text


def test_a_resumed_run_may_find_its_validation_set_elsewhere(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    saved = _segmenter(HIPPOCAMPUS / "train", HIPPOCAMPUS / "holdout", tmp_path)
    run.config.write_text(dump_config(parse_config(saved)))
    moved = _segmenter(HIPPOCAMPUS / "train", tmp_path / "moved-holdout", tmp_path)
    check_resumed_config(run, parse_config(moved))  # the data moved: allowed, like data.root
    moved["data"]["split"]["method"] = "nnunet"
    del moved["data"]["split"]["val_root"]
    with pytest.raises(MedvolError, match=r"data\.split\.method: 'separate' → 'nnunet'"):
        check_resumed_config(run, parse_config(moved))


def test_a_copied_dicom_series_is_a_leak(tmp_path: Path) -> None:
    series = sample_ct_series()
    copy = tmp_path / "copied-series"
    shutil.copytree(series, copy)

    def row(folder: str, case_id: str, target: int) -> tuple[str, Path, str, str]:
        return case_id, HIPPOCAMPUS / folder / "images" / f"{case_id}.nii.gz", str(target), ""

    train_rows = [row("train", c, i % 2) for i, c in enumerate(TRAIN_IDS)] + [("ct", series, "1", "")]
    train_csv = _manifest(tmp_path / "train.csv", train_rows, "class")
    val_rows = [row("holdout", c, 1) for c in HOLDOUT_IDS] + [("ct_again", copy, "0", "")]
    val_csv = _manifest(tmp_path / "val.csv", val_rows, "class")
    config = {
        "data": {
            "task": "classification",
            "root": str(train_csv),
            "split": {"method": "separate", "val_root": str(val_csv)},
            "num_classes": 2,
            "input_shape": [16, 16, 16],
        },
        "model": {"name": "resnet10", "options": {"in_channels": 1, "num_classes": 2}},
        "loss": {"name": "cross_entropy"},
    }
    with pytest.raises(MedvolError, match=r"same image content.*ct = ct_again.*leak"):
        _build(config, tmp_path)


def test_method_file_without_a_file_is_refused_when_the_config_is_loaded() -> None:
    config = _segmenter(HIPPOCAMPUS / "train", HIPPOCAMPUS / "holdout", Path("runs"))
    config["data"]["split"] = {"method": "file"}
    with pytest.raises(MedvolError, match=r"data\.split: split\.method: file needs split\.file"):
        parse_config(config)
