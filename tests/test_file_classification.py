"""Classifiers trained, evaluated and applied on scan files listed in a CSV manifest.

The data are 16 real MSD hippocampus MR crops; a case's class is whether its hippocampus
(label voxels > 0) is larger than the median of the 16. Two epochs of a 4-channel ResNet-10
cannot learn that: these tests check the plumbing (split, normaliser, cache, input shape,
evaluation numbers, prediction inputs), not accuracy.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

import medvol
from medvol import demo
from medvol.cli import main
from medvol.config import parse_config
from medvol.engine.distributed import Runtime
from medvol.engine.inference import classify_scan, load_trained
from medvol.engine.run_folder import RunFolder
from medvol.errors import MedvolError
from medvol.evaluation import evaluate_run
from medvol.tasks import ScanClassificationTask, task_for
from medvol.transforms import crop_or_pad
from medvol.volume import Volume

CASES = (
    "001", "003", "004", "006", "007", "008", "011", "014",
    "015", "017", "019", "020", "023", "024", "025", "026",
)  # fmt: skip
SHAPE = [32, 48, 32]


def manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case_id", "image", "class", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def labelled(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cases.csv`` over 16 copied images; two cases of the same class per patient."""
    source = shared_data / "msd-hippocampus"
    folder = tmp_path_factory.mktemp("hippo-classes")
    (folder / "images").mkdir()
    sizes = {}
    for case in CASES:
        shutil.copy(source / "images" / f"hippocampus_{case}.nii.gz", folder / "images")
        sizes[case] = int(
            (np.asarray(nib.load(source / "labels" / f"hippocampus_{case}.nii.gz").dataobj) > 0).sum()
        )
    median = float(np.median(list(sizes.values())))
    ordered = sorted(CASES, key=lambda c: sizes[c])  # 8 small, then 8 large: pairs share a class
    rows = [
        {
            "case_id": f"hippo-{case}",
            "image": f"images/hippocampus_{case}.nii.gz",
            "class": str(int(sizes[case] > median)),
            "patient_id": f"patient-{rank // 2:02d}",
        }
        for rank, case in enumerate(ordered)
    ]
    return manifest(folder / "cases.csv", rows)


def config(root: Path, out: Path | None = None, **data: Any) -> dict[str, Any]:
    return {
        "data": {
            "task": "classification",
            "root": str(root),
            "num_classes": 2,
            "input_shape": SHAPE,
            "split": {"method": "kfold", "n_splits": 4, "fold": 0, "seed": 0},
            **data,
        },
        "normalize": {"type": "ZScore", "params": {"per_scan": False}},
        "model": {"name": "resnet10", "options": demo.resnet_options(widths=4, stem_pool=True)},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "adam", "lr": 0.003},
        "train": {"epochs": 2, "batch_size": 4, "metric": "auc", "metric_mode": "max", "amp": "none"},
        "tracking": {"output_dir": str(out or root.parent / "runs"), "name": "clf", "tensorboard": False},
    }


@pytest.fixture(scope="module")
def run_dir(labelled: Path) -> Path:
    path = labelled.parent / "clf.yaml"
    path.write_text(yaml.safe_dump(config(labelled)))
    assert main(["train", str(path)]) == 0
    return labelled.parent / "runs" / "clf"


def classes_of(path: Path) -> dict[str, tuple[int, str]]:
    with open(path, newline="") as handle:
        return {row["case_id"]: (int(row["class"]), row["patient_id"]) for row in csv.DictReader(handle)}


def test_run_files_split_and_normaliser(run_dir: Path, labelled: Path) -> None:
    for name in ("config.yaml", "split.json", "fingerprint.json", "normalizer.json", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [0, 1] and 0.0 <= history[-1]["val_auc"] <= 1.0
    split = json.loads((run_dir / "split.json").read_text())
    truth = classes_of(labelled)
    assert sorted(split["train"] + split["val"]) == sorted(truth)
    patients = {side: {truth[c][1] for c in split[side]} for side in ("train", "val")}
    assert not patients["train"] & patients["val"]  # patient-grouped
    assert sorted(truth[c][0] for c in split["val"]) == [0, 0, 1, 1]  # stratified: 4 folds of 2 + 2
    fingerprint = json.loads((run_dir / "fingerprint.json").read_text())
    assert fingerprint["shape"] == SHAPE and fingerprint["class_counts"]["all"] == {"0": 8, "1": 8}
    normalizer = json.loads((run_dir / "normalizer.json").read_text())
    assert normalizer["type"] == "ZScore" and normalizer["learned"]["mean_"]  # fitted on the train fold
    assert len(list((run_dir / "cache").iterdir())) == 16  # every case preprocessed once
    trained = load_trained(run_dir, device="cpu")
    assert trained.normalizer is not None and isinstance(trained.task, ScanClassificationTask)


def test_training_samples_are_the_inputs_inference_builds(run_dir: Path, labelled: Path) -> None:
    cfg = parse_config(config(labelled))
    data = task_for(cfg).build_data(Runtime(torch.device("cpu")), RunFolder(run_dir))
    sample = data.val[0]
    assert sample["image"].shape == (1, *SHAPE) and sample["image"].dtype == torch.float32
    assert sample["label"].shape == () and sample["label"].dtype == torch.int64
    trained = load_trained(run_dir, device="cpu")
    case = data.val.cases[0]  # type: ignore[union-attr]
    from medvol.engine.inference import prepare_input

    prepared = prepare_input(trained, medvol.load(case.images[0])).array
    np.testing.assert_array_equal(prepared, sample["image"].numpy())  # bit for bit


def test_crop_or_pad_centres_and_pads_with_the_minimum() -> None:
    array = np.arange(5 * 2 * 3, dtype=np.float32).reshape(1, 5, 2, 3) + 1
    out = crop_or_pad(Volume(array, np.eye(4), {}), (3, 4, 3))
    assert out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out.array[0, :, 1:3, :], array[0, 1:4])  # central 3 of 5 along X
    assert (out.array[0, :, 0] == 1).all() and (out.array[0, :, 3] == 1).all()  # padded with the min
    np.testing.assert_allclose(out.affine[:3, 3], [1, -1, 0])  # origin follows the crop and pad


def test_evaluate_on_val_and_on_a_manifest(
    run_dir: Path, labelled: Path, shared_data: Path, tmp_path: Path
) -> None:
    split = json.loads((run_dir / "split.json").read_text())
    evaluation = evaluate_run(run_dir, split="val", n_resamples=50, device="cpu", out=tmp_path / "val")
    with open(tmp_path / "val" / "cases.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["case_id"] for r in rows) == sorted(split["val"])
    truth = classes_of(labelled)
    assert all(int(r["target"]) == truth[r["case_id"]][0] for r in rows)
    auc = roc_auc_score([int(r["target"]) for r in rows], [float(r["probability_1"]) for r in rows])
    summary = json.loads((tmp_path / "val" / "summary.json").read_text())
    assert summary == evaluation.summary
    assert summary["metrics"]["auc"]["estimate"] == pytest.approx(auc)
    assert summary["n_cases"] == 4 and summary["errors"] == [] and summary["task"] == "classification"
    held_out = manifest(
        tmp_path / "external.csv",
        [
            {
                "case_id": c,
                "image": str(labelled.parent / f"images/hippocampus_{c[6:]}.nii.gz"),
                "class": str(t),
            }
            for c, (t, _) in truth.items()
            if c in split["train"][:3] + split["val"][:3]
        ]
        + [
            {
                "case_id": "bad-class",
                "image": str(shared_data / "msd-hippocampus/images/hippocampus_033.nii.gz"),
                "class": "7",
            }
        ],
    )
    external = evaluate_run(run_dir, cases=held_out, n_resamples=20, device="cpu").summary
    assert external["n_cases"] == 6 and [e["case_id"] for e in external["errors"]] == ["bad-class"]
    assert "outside [0, 2)" in external["errors"][0]["problem"]
    assert sorted(external["overlap_with_training"]) == sorted(split["train"][:3])


def test_predict_uses_the_training_inputs(run_dir: Path, labelled: Path, tmp_path: Path) -> None:
    in_dir = tmp_path / "scans"
    in_dir.mkdir()
    for case in CASES[:3]:
        shutil.copy(labelled.parent / "images" / f"hippocampus_{case}.nii.gz", in_dir)
    assert main(["predict", str(run_dir), str(in_dir), str(tmp_path / "out"), "--device", "cpu"]) == 0
    with open(tmp_path / "out" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    trained = load_trained(run_dir, device="cpu")
    for row in rows:
        probabilities = np.array([float(row["probability_0"]), float(row["probability_1"])])
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        expected = classify_scan(trained, medvol.load(in_dir / row["input"]))
        np.testing.assert_allclose(probabilities, expected, atol=2e-6)
        assert int(row["predicted_class"]) == int(np.argmax(expected))
    recorded = json.loads((tmp_path / "out" / "predict.json").read_text())["classifier_input"]
    assert recorded["shape"] == SHAPE and "scan files" in recorded["how"]


@pytest.mark.parametrize(
    ("value", "message"),
    [("benign", "'benign' is not an integer class index"), ("2", "class 2 is outside [0, 2)")],
)
def test_bad_classes_are_refused_naming_the_case(
    labelled: Path, tmp_path: Path, value: str, message: str
) -> None:
    with open(labelled, newline="") as handle:
        rows = list(csv.DictReader(handle))[:4]
    for row in rows:
        row["image"] = str(labelled.parent / row["image"])
    rows[2]["class"] = value
    path = manifest(tmp_path / "bad.csv", rows)
    with pytest.raises(MedvolError, match=re.escape(message)) as error:
        task_for(parse_config(config(path))).build_data(Runtime(torch.device("cpu")), RunFolder(tmp_path))
    assert rows[2]["case_id"] in str(error.value)


def test_missing_input_shape_is_a_config_error(labelled: Path) -> None:
    with pytest.raises(MedvolError, match=r"needs data\.input_shape"):
        parse_config(config(labelled, input_shape=None))
