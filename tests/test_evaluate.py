"""``medvol evaluate`` on real trained runs: numbers checked against independent computations.

Two tiny runs are trained once per test session (a classifier on an AdrenalMNIST3D subset, a
U-Net on five hippocampus cases) and copied for each test that writes into its run folder.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import yaml
from scipy import ndimage
from sklearn.metrics import roc_auc_score, roc_curve

from medvol import demo
from medvol.cli import main
from medvol.errors import MedvolError
from medvol.evaluation import aggregate, evaluate_run, point_estimates
from medvol.metrics import (
    CLASSIFICATION_CI_METRICS,
    classification_metrics,
    classification_statistic,
    dice_per_class,
    mean_ci,
)
from tests.shared_samples import copy_hippocampus_pairs, write_adrenal_subset

HIPPOCAMPUS_CASES = ("001", "003", "004", "006", "007")


def _cached_run(tmp_path_factory: pytest.TempPathFactory, name: str, config: dict[str, Any]) -> Path:
    """Train ``config`` once per session (under pytest's base temp folder); the run folder."""
    base = tmp_path_factory.getbasetemp() / "medvol-evaluate-runs"
    run_dir = base / "runs" / name
    done = base / f"{name}.done"
    if not done.is_file():
        shutil.rmtree(run_dir, ignore_errors=True)
        config["tracking"] = {"output_dir": str(base / "runs"), "name": name, "tensorboard": False}
        path = base / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        assert main(["train", str(path)]) == 0
        done.touch()
    return run_dir


def adrenal_file(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A balanced AdrenalMNIST3D subset: 48 train, 40 val, 30 test cases."""
    path = tmp_path_factory.getbasetemp() / "medvol-evaluate-runs" / "adrenal.npz"
    if not path.is_file():
        write_adrenal_subset(shared_data, path, {"train": 48, "val": 40, "test": 30})
    return path


def classifier_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch ResNet-10 (width 8) on the AdrenalMNIST3D subset."""
    config = demo.medmnist_classifier(adrenal_file(shared_data, tmp_path_factory), epochs=2)
    return _cached_run(tmp_path_factory, "classifier", config)


def hippocampus_folder(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.getbasetemp() / "medvol-evaluate-runs" / "hippocampus"
    return copy_hippocampus_pairs(shared_data, folder, HIPPOCAMPUS_CASES)


def segmenter_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch small U-Net on five hippocampus cases (2-fold nnU-Net split: 3 validation cases)."""
    config = demo.hippocampus_segmenter(
        hippocampus_folder(shared_data, tmp_path_factory),
        epochs=2,
        split={"method": "nnunet", "n_splits": 2},
    )
    return _cached_run(tmp_path_factory, "segmenter", config)


def copy_run(run_dir: Path, target: Path) -> Path:
    """A private copy of a cached run, so a test may write evaluations into it."""
    return Path(shutil.copytree(run_dir, target / run_dir.name))


def evaluated_run(run_dir: Path, tmp_path_factory: pytest.TempPathFactory, n_resamples: int = 200) -> Path:
    """A copy of a cached run with ``evaluation-val`` written, once per session (do not modify)."""
    base = tmp_path_factory.getbasetemp() / "medvol-evaluate-runs" / "evaluated"
    done = base / f"{run_dir.name}.done"
    if not done.is_file():
        shutil.rmtree(base / run_dir.name, ignore_errors=True)
        evaluate_run(copy_run(run_dir, base), n_resamples=n_resamples, device="cpu")
        done.touch()
    return base / run_dir.name


def strict_json(path: Path) -> dict[str, Any]:
    """Load JSON refusing NaN/Infinity (what browsers and other languages require)."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}")

    data: dict[str, Any] = json.loads(path.read_text(), parse_constant=refuse)
    return data


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def classifier(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return classifier_run(shared_data, tmp_path_factory)


@pytest.fixture(scope="module")
def segmenter(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return segmenter_run(shared_data, tmp_path_factory)


def same(a: float | None, b: float | None) -> bool:
    """Equal to 1e-9, NaN/None equal to each other."""
    a_nan = a is None or math.isnan(a)
    b_nan = b is None or math.isnan(b)
    return (a_nan and b_nan) or (not a_nan and not b_nan and a == pytest.approx(b, abs=1e-9))


# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------


def test_classifier_val_metrics_match_independent_computation(
    classifier: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = evaluated_run(classifier, tmp_path_factory) / "evaluation-val"
    summary = strict_json(out / "summary.json")
    rows = read_csv(out / "cases.csv")
    assert list(rows[0]) == ["case_id", "target", "probability_0", "probability_1", "predicted"]
    assert [r["case_id"] for r in rows] == [f"val-{i:05d}" for i in range(40)]
    targets = np.array([int(r["target"]) for r in rows])
    probability = np.array([float(r["probability_1"]) for r in rows])
    predicted = np.array([int(r["predicted"]) for r in rows])
    labels = np.load(classifier.parents[1] / "adrenal.npz")["val_labels"][:, 0]
    np.testing.assert_array_equal(targets, labels)
    np.testing.assert_array_equal(predicted, (probability >= 0.5).astype(int))

    metrics = summary["metrics"]
    assert metrics["auc"]["estimate"] == pytest.approx(roc_auc_score(targets, probability), abs=1e-12)
    assert metrics["accuracy"]["estimate"] == pytest.approx(np.mean(predicted == targets))
    positives = targets == 1
    if np.any(predicted == 1):
        assert metrics["ppv"]["estimate"] == pytest.approx(np.mean(targets[predicted == 1] == 1))
    assert metrics["sensitivity"]["estimate"] == pytest.approx(np.mean(predicted[positives] == 1))
    assert metrics["specificity"]["estimate"] == pytest.approx(np.mean(predicted[~positives] == 0))
    for name in CLASSIFICATION_CI_METRICS:
        entry = metrics[name]
        if name == "ece":  # a biased statistic under resampling: reported without a CI, and says so
            assert entry["low"] is None and entry["high"] is None and "no CI" in entry["note"]
        elif entry["estimate"] is not None:
            assert entry["low"] - 1e-12 <= entry["estimate"] <= entry["high"] + 1e-12, name
    assert summary["confusion_matrix"] == [
        [int(np.sum((targets == t) & (predicted == p))) for p in (0, 1)] for t in (0, 1)
    ]
    (curve,) = summary["roc"]
    fpr, tpr, _ = roc_curve(targets, probability)
    np.testing.assert_allclose(curve["fpr"], fpr)
    np.testing.assert_allclose(curve["tpr"], tpr)
    assert len(curve["band_tpr_low"]) == len(curve["band_fpr"]) == 101
    assert all(lo <= hi for lo, hi in zip(curve["band_tpr_low"], curve["band_tpr_high"], strict=True))
    bins = summary["calibration"]
    assert sum(bins["count"]) == 40
    ece = sum(
        n / 40 * abs(o - p)
        for n, o, p in zip(bins["count"], bins["observed"], bins["mean_predicted"], strict=True)
        if n
    )
    assert metrics["ece"]["estimate"] == pytest.approx(ece)
    assert summary["split"] == "val" and summary["n_cases"] == 40 and summary["errors"] == []
    assert summary["bootstrap"] == {
        "n_resamples": 200,
        "seed": 0,
        "method": "percentile, case level",
        "confidence": 0.95,
    }
    assert summary["checkpoint"] == "best" and summary["epoch"] in (1, 2)
    assert summary["threshold"] == 0.5 and summary["medvol_version"]


def test_bootstrap_statistics_equal_classification_metrics() -> None:
    """The fast per-resample statistics give exactly what classification_metrics gives."""
    rng = np.random.default_rng(3)
    for classes, threshold in ((2, 0.5), (2, 0.3), (2, 0.99), (3, 0.5)):
        targets = rng.integers(0, classes, size=60)
        if classes == 3:
            targets[targets == 2] = 1  # a class without cases: macro averages must leave it out
        logits = rng.normal(size=(60, classes)) + 1.5 * np.eye(classes)[targets]
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        expected = classification_metrics(targets, probabilities, threshold)
        for name in CLASSIFICATION_CI_METRICS:
            value = classification_statistic(name, threshold)(targets, probabilities)
            assert same(value, expected[name]), (classes, threshold, name, value, expected[name])  # type: ignore[literal-required]


def test_test_split_is_counted_and_a_second_evaluation_announced(
    classifier: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = copy_run(classifier, tmp_path)
    arguments = ["evaluate", str(run_dir), "--split", "test", "--bootstrap", "50", "--device", "cpu"]
    assert main(arguments) == 0
    first = capsys.readouterr().out
    assert "already evaluated" not in first and "auc" in first
    assert strict_json(run_dir / "evaluation-test" / "summary.json")["test_evaluation_number"] == 1
    assert main(arguments) == 0
    assert "notice: the test split of this run was already evaluated" in capsys.readouterr().out
    summary = strict_json(run_dir / "evaluation-test" / "summary.json")
    assert summary["test_evaluation_number"] == 2 and summary["n_cases"] == 30


def test_classification_refuses_a_manifest_and_a_bad_threshold(classifier: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "cases.csv"
    manifest.write_text("case_id,image,label\n")
    with pytest.raises(MedvolError, match="--split val"):
        evaluate_run(classifier, cases=manifest)
    with pytest.raises(MedvolError, match="threshold"):
        evaluate_run(classifier, threshold=1.5)
    with pytest.raises(MedvolError, match="--largest-component apply to segmentation runs"):
        evaluate_run(classifier, largest_component=True)


# ----------------------------------------------------------------------------------------------
# Segmentation
# ----------------------------------------------------------------------------------------------


def test_segmenter_val_evaluation(segmenter: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    run_dir = evaluated_run(segmenter, tmp_path_factory)
    out = run_dir / "evaluation-val"
    summary = strict_json(out / "summary.json")
    val = json.loads((run_dir / "split.json").read_text())["val"]
    rows = read_csv(out / "cases.csv")
    assert [(r["case_id"], r["class"]) for r in rows] == [(c, k) for c in sorted(val) for k in ("1", "2")]
    assert "patient_id" not in rows[0]
    assert {"dice", "hd95_mm", "assd_mm", "volume_difference_ml"} <= set(rows[0])

    labels = segmenter.parents[1] / "hippocampus"
    for case_id in val:
        prediction = nib.load(out / "predictions" / f"{case_id}.nii.gz")
        label = nib.load(labels / "labels" / f"{case_id}.nii.gz")
        assert prediction.shape == label.shape
        np.testing.assert_allclose(prediction.affine, label.affine, atol=1e-4)
        dice = dice_per_class(np.asarray(prediction.dataobj), np.asarray(label.dataobj).astype(int), (1, 2))
        for row in (r for r in rows if r["case_id"] == case_id):
            assert float(row["dice"]) == pytest.approx(dice[int(row["class"])])

    assert summary["split"] == "val" and summary["n_cases"] == len(val) and summary["errors"] == []
    assert summary["empty_policy"] == {
        "both_empty_dice": None,
        "both_empty_distance_mm": None,
        "one_empty_distance_mm": None,
    }
    assert summary["checkpoint"] == "best" and summary["bootstrap"]["seed"] == 0
    assert summary["overlap_with_training"] == []
    for value in ("1", "2"):
        dice = summary["metrics"][value]["dice"]
        mean = np.mean([float(r["dice"]) for r in rows if r["class"] == value])
        assert dice["mean"] == pytest.approx(mean)
        assert dice["low"] <= dice["mean"] <= dice["high"] and dice["n"] == len(val)


def test_segmenter_scored_with_the_largest_component_of_each_class(segmenter: Path, tmp_path: Path) -> None:
    """``largest_component`` scores what scipy's 26-connected labelling keeps of the plain prediction."""
    run_dir = copy_run(segmenter, tmp_path)
    plain = evaluate_run(run_dir, out=tmp_path / "plain", n_resamples=20, device="cpu")
    kept = evaluate_run(run_dir, out=tmp_path / "kept", n_resamples=20, device="cpu", largest_component=True)
    assert plain.summary["largest_component"] is False and kept.summary["largest_component"] is True
    rows = read_csv(kept.out / "cases.csv")
    labels = segmenter.parents[1] / "hippocampus" / "labels"
    changed = 0
    for case_id in json.loads((run_dir / "split.json").read_text())["val"]:
        predicted = np.asarray(nib.load(plain.out / "predictions" / f"{case_id}.nii.gz").dataobj)
        expected = np.zeros_like(predicted)
        for value in (1, 2):
            components, count = ndimage.label(predicted == value, structure=np.ones((3, 3, 3)))
            if count:
                sizes = np.bincount(components.ravel())[1:]
                expected[components == 1 + int(np.argmax(sizes))] = value
        scored = np.asarray(nib.load(kept.out / "predictions" / f"{case_id}.nii.gz").dataobj)
        np.testing.assert_array_equal(scored, expected)
        changed += int(not np.array_equal(scored, predicted))
        label = np.asarray(nib.load(labels / f"{case_id}.nii.gz").dataobj).astype(int)
        dice = dice_per_class(expected, label, (1, 2))
        for row in (r for r in rows if r["case_id"] == case_id):
            assert float(row["dice"]) == pytest.approx(dice[int(row["class"])])
    assert changed  # the 2-epoch model leaves stray components for the option to remove


def test_segmenter_on_a_manifest_scores_good_cases_and_lists_bad_ones(
    segmenter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = copy_run(segmenter, tmp_path)
    source = tmp_path / "data"
    source.mkdir()
    hippocampus = segmenter.parents[1] / "hippocampus"
    train_case = json.loads((run_dir / "split.json").read_text())["train"][0]
    # A label moved by 5 mm no longer lies on its image's grid.
    moved = nib.load(hippocampus / "labels" / "hippocampus_007.nii.gz")
    affine = moved.affine.copy()
    affine[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(moved.dataobj), affine), source / "moved_label.nii.gz")
    manifest = tmp_path / "held-out.csv"
    manifest.write_text(
        "case_id,image,label\n"
        f"good,{hippocampus / 'images' / 'hippocampus_006.nii.gz'},"
        f"{hippocampus / 'labels' / 'hippocampus_006.nii.gz'}\n"
        f"{train_case},{hippocampus / 'images' / f'{train_case}.nii.gz'},"
        f"{hippocampus / 'labels' / f'{train_case}.nii.gz'}\n"
        f"shifted,{hippocampus / 'images' / 'hippocampus_007.nii.gz'},data/moved_label.nii.gz\n"
    )
    code = main(["evaluate", str(run_dir), "--cases", str(manifest), "--bootstrap", "50", "--device", "cpu"])
    assert code == 1  # a case could not be scored
    output = capsys.readouterr().out
    assert "not scored: shifted" in output and "training cases of this run" in output
    out = run_dir / "evaluation-held-out"
    summary = strict_json(out / "summary.json")
    assert summary["split"] == "cases" and summary["n_cases"] == 2 and summary["n_requested"] == 3
    (error,) = summary["errors"]
    assert error["case_id"] == "shifted" and "affine differs" in error["problem"]
    assert error["path"].endswith("moved_label.nii.gz")
    assert summary["overlap_with_training"] == [train_case]
    assert {r["case_id"] for r in read_csv(out / "cases.csv")} == {"good", train_case}
    assert sorted(p.name for p in (out / "predictions").iterdir()) == sorted(
        [f"{train_case}.nii.gz", "good.nii.gz"]
    )


def test_evaluate_errors_name_the_file(
    segmenter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 1
    assert "nowhere: run folder not found" in capsys.readouterr().err

    assert main(["evaluate", str(segmenter), "--split", "test"]) == 1
    error = capsys.readouterr().err
    assert "split.json" in error and "no official test split" in error and "--cases" in error

    no_checkpoint = copy_run(segmenter, tmp_path)
    shutil.rmtree(no_checkpoint / "checkpoints")
    assert main(["evaluate", str(no_checkpoint)]) == 1
    assert "no checkpoint to load: checkpoints/last.pt is missing" in capsys.readouterr().err

    unlabelled = tmp_path / "unlabelled.csv"
    image = segmenter.parents[1] / "hippocampus" / "images" / "hippocampus_001.nii.gz"
    unlabelled.write_text(f"case_id,image\nx,{image}\n")
    with pytest.raises(MedvolError, match="no case has a label map") as raised:
        evaluate_run(segmenter, cases=unlabelled)
    assert raised.value.path == unlabelled
    with pytest.raises(MedvolError, match="manifest not found"):
        evaluate_run(segmenter, cases=tmp_path / "missing.csv")


# ----------------------------------------------------------------------------------------------
# Aggregation over runs
# ----------------------------------------------------------------------------------------------


def _classification_summary(auc: float | None, run: str) -> dict[str, Any]:
    return {
        "task": "classification",
        "split": "test",
        "run": run,
        "metrics": {"auc": {"estimate": auc, "low": None, "high": None}},
    }


def test_aggregate_gives_a_t_interval_over_runs(
    segmenter: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    result = aggregate([_classification_summary(v, f"seed{i}") for i, v in enumerate((0.80, 0.82, 0.87))])
    expected = mean_ci([0.80, 0.82, 0.87])
    auc = result["metrics"]["auc"]
    assert result["n_runs"] == 3 and result["sources"] == ["seed0", "seed1", "seed2"]
    assert (auc["mean"], auc["low"], auc["high"]) == pytest.approx(tuple(expected))
    assert auc["values"] == [0.80, 0.82, 0.87] and auc["undefined_in"] == []

    failed = aggregate([_classification_summary(0.8, "a"), _classification_summary(None, "b")])
    assert failed["metrics"]["auc"]["mean"] is None and failed["metrics"]["auc"]["undefined_in"] == ["b"]
    with pytest.raises(MedvolError, match="different tasks"):
        aggregate([_classification_summary(0.8, "a"), {"task": "segmentation", "split": "test"}])

    run_dir = evaluated_run(segmenter, tmp_path_factory)
    single = aggregate([run_dir / "evaluation-val"])
    estimates = point_estimates(strict_json(run_dir / "evaluation-val" / "summary.json"))
    assert {"dice_1", "dice_2", "hd95_mm_1", "dice_mean"} <= set(single["metrics"])
    assert single["metrics"]["dice_1"]["mean"] == pytest.approx(estimates["dice_1"])
    assert single["metrics"]["dice_1"]["low"] is None  # one run: no interval
