"""The reproduction tables: threshold chosen on validation, majority-class row, bounded seed intervals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from medvol.errors import MedvolError
from medvol.evaluation.aggregate import metric_range, over_runs
from medvol.evaluation.classification import (
    choose_threshold,
    majority_class_scores,
    read_classification_cases,
    scores_at_threshold,
)
from medvol.metrics import balanced_accuracy, mean_ci
from medvol.reproduce import cross_validation, format_results, load_study, record_test_evaluations

# Six validation cases, by decreasing class-1 probability:
#   p      0.8  0.6  0.4  0.35  0.2  0.1
#   class  1    1    0    1     0    0
# Predicting class 1 where p >= t (3 positives, 3 negatives), balanced accuracy (TPR + TNR) / 2:
#   t = 0.8: (1/3 + 1) / 2 = 0.667    t = 0.6: (2/3 + 1) / 2 = 0.833    t = 0.4: (2/3 + 2/3) / 2 = 0.667
#   t = 0.35: (1 + 2/3) / 2 = 0.833   t = 0.2: (1 + 1/3) / 2 = 0.667    t = 0.1: (1 + 0) / 2 = 0.5
# Best 0.833 at 0.6 and at 0.35: the tie goes to the higher threshold, 0.6.
TARGETS = np.array([0, 0, 1, 1, 0, 1])
CLASS_1 = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.6])


def test_threshold_maximises_validation_balanced_accuracy_by_hand() -> None:
    assert choose_threshold(TARGETS, CLASS_1) == 0.6
    assert choose_threshold(TARGETS, np.stack([1 - CLASS_1, CLASS_1], axis=1)) == 0.6
    # Without the tie (the 0.4 case becomes class 1): t = 0.35 gives (4/4 + 2/2) / 2 = 1.
    assert choose_threshold(np.array([0, 1, 1, 1, 0, 1]), CLASS_1) == 0.35
    assert balanced_accuracy(TARGETS, CLASS_1, 0.6) == pytest.approx(5 / 6)
    assert balanced_accuracy(TARGETS, CLASS_1, 0.5) == pytest.approx(5 / 6)


def test_threshold_is_the_best_of_every_candidate_on_random_cases() -> None:
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 2, 200)
    scores = np.clip(0.3 * targets + rng.normal(0.4, 0.2, 200), 0, 1)
    chosen = choose_threshold(targets, scores)
    best = max(balanced_accuracy(targets, scores, t) for t in np.unique(scores))
    assert balanced_accuracy(targets, scores, chosen) == pytest.approx(best)


def test_threshold_needs_two_classes_both_present() -> None:
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.zeros(4, dtype=int), np.linspace(0, 1, 4))
    with pytest.raises(ValueError, match="two classes only"):
        choose_threshold(np.array([0, 1, 2]), np.full((3, 3), 1 / 3))


def test_scores_at_a_threshold_have_bootstrap_intervals() -> None:
    probabilities = np.stack([1 - CLASS_1, CLASS_1], axis=1)
    scores = scores_at_threshold(TARGETS, probabilities, 0.35, n_resamples=200)
    assert scores["accuracy"]["estimate"] == pytest.approx(5 / 6)  # only the 0.4 case is wrong
    assert scores["balanced_accuracy"]["estimate"] == pytest.approx(5 / 6)
    assert 0.0 <= scores["accuracy"]["low"] <= 5 / 6 <= scores["accuracy"]["high"] <= 1.0


def test_majority_class_row_of_the_adrenal_split() -> None:
    """AdrenalMNIST3D: 929 of 1188 training cases normal; the test split has 229 normal, 69 abnormal."""
    targets = np.array([0] * 229 + [1] * 69)
    row = majority_class_scores({"0": 929, "1": 259}, targets, 2)
    assert row["class"] == 0
    assert row["metrics"] == pytest.approx({"auc": 0.5, "accuracy": 229 / 298, "balanced_accuracy": 0.5})
    assert round(row["metrics"]["accuracy"], 3) == 0.768
    assert majority_class_scores({"0": 3, "1": 5}, targets, 2)["metrics"]["accuracy"] == pytest.approx(
        69 / 298
    )


def test_cases_file_is_read_back_and_bad_ones_are_named(tmp_path: Path) -> None:
    good = tmp_path / "cases.csv"
    good.write_text("case_id,target,probability_0,probability_1,predicted\na,0,0.9,0.1,0\nb,1,0.25,0.75,1\n")
    case_ids, targets, probabilities = read_classification_cases(good)
    assert case_ids == ["a", "b"] and targets.tolist() == [0, 1]
    assert probabilities.tolist() == [[0.9, 0.1], [0.25, 0.75]]
    bad = tmp_path / "segmentation.csv"
    bad.write_text("case_id,class,dice\na,1,0.9\n")
    with pytest.raises(MedvolError, match=r"segmentation\.csv: is not a classification cases\.csv"):
        read_classification_cases(bad)
    with pytest.raises(MedvolError, match=r"missing\.csv: cannot read"):
        read_classification_cases(tmp_path / "missing.csv")


# The 64³ study's three per-seed test accuracies as printed in docs/results.md (4 decimals): their
# t-interval reaches 1.117 (the page's [0.4671, 1.1168] came from the unrounded values).
SEED_ACCURACIES = [0.8658, 0.6409, 0.8691]


def test_t_interval_is_clipped_to_the_metric_range_and_says_so() -> None:
    raw = mean_ci(SEED_ACCURACIES)
    assert (raw.low, raw.high) == pytest.approx((0.4671, 1.1168), abs=2e-4)
    bounded = mean_ci(SEED_ACCURACIES, bounds=(0.0, 1.0))
    assert (bounded.estimate, bounded.low, bounded.high) == pytest.approx((raw.estimate, raw.low, 1.0))
    assert bounded.clipped and not raw.clipped
    inside = mean_ci([0.80, 0.82, 0.87], bounds=(0.0, 1.0))
    assert not inside.clipped and tuple(inside) == pytest.approx(tuple(mean_ci([0.80, 0.82, 0.87])))


def test_over_seeds_gives_range_and_clipped_interval() -> None:
    entry = over_runs(SEED_ACCURACIES, ["seed 0", "seed 1", "seed 2"], "accuracy")
    assert (entry["min"], entry["max"]) == (0.6409, 0.8691)
    assert entry["high"] == 1.0 and entry["clipped"] and entry["t_high"] == pytest.approx(1.1168, abs=2e-4)
    failed = over_runs([0.8, math.nan], ["seed 0", "seed 1"], "accuracy")
    assert failed["mean"] is None and failed["min"] is None and failed["undefined_in"] == ["seed 1"]
    assert metric_range("dice_2") == (0.0, 1.0) and metric_range("hd95_mm_1") == (0.0, math.inf)
    assert metric_range("volume_difference_ml_1") == (-math.inf, math.inf)


def _results() -> dict:
    study = load_study("adrenalmnist3d")
    run_metrics = [
        {"auc": 0.91, "accuracy": 0.8658, "balanced_accuracy": 0.80},
        {"auc": 0.89, "accuracy": 0.6409, "balanced_accuracy": 0.75},
        {"auc": 0.92, "accuracy": 0.8691, "balanced_accuracy": 0.81},
    ]
    runs = [
        {
            "seed": seed,
            "epoch": 20,
            "train_seconds": 600.0,
            "metrics": {
                k: {"estimate": v, "low": v - 0.05, "high": min(v + 0.05, 1.0)} for k, v in m.items()
            },
        }
        for seed, m in enumerate(run_metrics)
    ]
    sources = ["seed 0", "seed 1", "seed 2"]
    return {
        "study": study.name,
        "budget": "cpu",
        "description": study.description,
        "overrides": [],
        "protocol_changed": False,
        "evaluated": {"split": "test", "cases": None, "checkpoint": "best"},
        "seeds": [0, 1, 2],
        "runs": runs,
        "over_seeds": {
            m: over_runs([r["metrics"][m]["estimate"] for r in runs], sources, m) for m in study.metrics
        },
        "baseline": majority_class_scores({"0": 929, "1": 259}, np.array([0] * 229 + [1] * 69), 2),
        "test_evaluations": {
            "count": 6,
            "record": "test-evaluations.json",
            "by_recipe": [
                {"recipe": "a.yaml", "fingerprint": "111111111111", "seeds": [0, 1, 2]},
                {"recipe": "b.yaml", "fingerprint": "222222222222", "seeds": [0, 1, 2]},
            ],
        },
        "published": study.published,
        "labels": study.labels,
        "data": [],
    }


def test_table_states_looks_baseline_range_clipping_and_sources() -> None:
    table = format_results(_results())
    assert "**Test split scored 6 times from this output folder**" in table
    assert (
        "recipe `a.yaml` (111111111111), seeds 0, 1, 2; recipe `b.yaml` (222222222222), seeds 0, 1, 2"
        in table
    )
    assert "| **0.7919 [0.4670, 1.0000]**† |" in table
    assert "| 0.6409 – 0.8691 |" in table
    assert (
        "| majority class (class 0: 929 of 1188 training cases), no model | 0.5000 | 0.7685 | 0.5000 |"
        in table
    )
    assert "| ResNet-18+ACS (published [1]) | 0.8390 | 0.7540 | — |" in table
    assert "† The t-interval reached outside the metric's range" in table
    assert '[1] Yang et al., "MedMNIST v2' in table and "Scientific Data 10:41 (2023)" in table
    assert not format_results(_results(), title=False).startswith("#")


def test_every_published_row_must_cite_its_source(tmp_path: Path) -> None:
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: s\nbudgets: {cpu: r.yaml}\nevaluate: {split: test}\nmetrics: [auc]\n"
        "published: {sources: {p: Paper, Table 2 (2020)}, rows: [{method: A, auc: 0.8}]}\n"
    )
    with pytest.raises(MedvolError, match=r"study.yaml: published row 1 \(A\) cites no source"):
        load_study(study)
    study.write_text(study.read_text().replace("auc: 0.8}", "auc: 0.8, source: p}"))
    assert load_study(study).published["rows"][0]["source"] == "p"


def test_a_damaged_record_of_test_evaluations_is_named_not_overwritten(tmp_path: Path) -> None:
    record = tmp_path / "test-evaluations.json"
    record.write_text('{"split": "test", "evaluations": [')
    with pytest.raises(
        MedvolError, match=r"test-evaluations\.json: cannot read the record of test evaluations"
    ):
        record_test_evaluations(tmp_path, [], "recipe.yaml")
    assert record.read_text() == '{"split": "test", "evaluations": ['
    record.unlink()
    assert record_test_evaluations(tmp_path, [], "recipe.yaml") == {
        "count": 0,
        "record": "test-evaluations.json",
        "by_recipe": [],
    }


# Two folds, two seeds, Dice per case (class 1, class 2); case c's class 2 is undefined in seed 0:
#   seed 0: fold 0 a (0.9, 0.8), b (0.7, 0.6); fold 1 c (0.5, nan)
#   seed 1: fold 0 a (0.8, 0.7), b (0.6, 0.5); fold 1 c (0.9, 0.4)
# Pooled per seed (mean over the three cases, nan left out):
#   Dice 1: seed 0 (0.9 + 0.7 + 0.5) / 3 = 0.7 (the mean of fold means would be 0.65); seed 1 2.3 / 3
#   Dice 2: seed 0 (0.8 + 0.6) / 2 = 0.7; seed 1 1.6 / 3
# Fold means over seeds, Dice 1: fold 0 (0.8 + 0.7) / 2 = 0.75, fold 1 (0.5 + 0.9) / 2 = 0.7.
# Dice 1 over seeds: mean 0.7333, t-interval 0.7333 ± 12.706 · 0.0471 / √2 = [0.3098, 1.1569], clipped to 1.
CV_CASES = {
    (0, 0): {"a": (0.9, 0.8), "b": (0.7, 0.6)},
    (1, 0): {"c": (0.5, math.nan)},
    (0, 1): {"a": (0.8, 0.7), "b": (0.6, 0.5)},
    (1, 1): {"c": (0.9, 0.4)},
}


def _cv_runs(root: Path, cases: dict = CV_CASES) -> list[dict]:
    """``results.json`` run entries with a ``cases.csv`` each, as ``--folds 0,1 --seeds 2`` writes them."""
    runs = []
    for (fold, seed), scores in cases.items():
        evaluation = root / f"fold{fold}-seed{seed}" / "reproduce-val"
        evaluation.mkdir(parents=True)
        rows = [f"{case},{c + 1},{values[c]!r}" for case, values in scores.items() for c in (0, 1)]
        (evaluation / "cases.csv").write_text("case_id,class,dice\n" + "\n".join(rows) + "\n")
        defined = [[v[c] for v in scores.values() if not math.isnan(v[c])] for c in (0, 1)]
        means = {f"dice_{c}": float(np.mean(d)) if d else math.nan for c, d in enumerate(defined, 1)}
        runs.append(
            {
                "fold": fold,
                "seed": seed,
                "run_dir": str(evaluation.parent),
                "evaluations": [evaluation.name],
                "cases": len(scores),
                "epoch": 50,
                "train_seconds": 300.0,
                "metrics": {m: {"estimate": v, "low": None, "high": None} for m, v in means.items()},
            }
        )
    return sorted(runs, key=lambda run: (run["fold"], run["seed"]))


def test_cross_validation_pools_the_cases_of_every_fold_per_seed(tmp_path: Path) -> None:
    cv = cross_validation(["dice_1", "dice_2"], _cv_runs(tmp_path), 5)
    assert (cv["folds"], cv["n_folds"], cv["cases"]) == ([0, 1], 5, 3)
    assert [entry["metrics"]["dice_1"] for entry in cv["per_seed"]] == pytest.approx([0.7, 2.3 / 3])
    assert [entry["metrics"]["dice_2"] for entry in cv["per_seed"]] == pytest.approx([0.7, 1.6 / 3])
    over = cv["over_seeds"]["dice_1"]
    assert over["mean"] == pytest.approx((0.7 + 2.3 / 3) / 2)
    assert over["high"] == 1.0 and over["clipped"]  # two seeds: the t-interval passes 1
    assert [fold["over_seeds"]["dice_1"]["mean"] for fold in cv["per_fold"]] == pytest.approx([0.75, 0.7])
    assert (cv["over_folds"]["dice_1"]["min"], cv["over_folds"]["dice_1"]["max"]) == pytest.approx(
        (0.7, 0.75)
    )
    overlapping = {**CV_CASES, (1, 0): {"a": (0.5, 0.5)}}
    with pytest.raises(
        MedvolError, match="case a is scored in folds 0 and 1: the folds' validation cases overlap"
    ):
        cross_validation(["dice_1"], _cv_runs(tmp_path / "overlap", overlapping), 5)


def _cv_results(root: Path, n_folds: int) -> dict:
    study = load_study("hippocampus")
    runs = _cv_runs(root)
    cv = cross_validation(study.metrics, runs, n_folds)
    return {
        "study": study.name,
        "budget": "cpu",
        "description": study.description,
        "overrides": [],
        "protocol_changed": False,
        "evaluated": {"split": "val", "cases": None, "checkpoint": "last"},
        "seeds": [0, 1],
        "runs": runs,
        "over_seeds": cv.pop("over_seeds"),
        "cross_validation": cv,
        "baseline": None,
        "published": study.published,
        "labels": study.labels,
        "data": [],
    }


def test_the_table_says_how_many_folds_the_mean_is_of(tmp_path: Path) -> None:
    table = format_results(_cv_results(tmp_path / "of5", 5))
    assert (
        "| medvol, 2 of 5 folds (folds 0, 1; not a 5-fold mean): per-case mean over the 3 pooled "
        "validation cases, mean over 2 seeds [95% t-interval over seeds] | **0.7333 [0.3098, 1.0000]**† |"
        in table
    )
    assert "| medvol, lowest – highest of the 2 folds (fold means over seeds) | 0.7000 – 0.7500 |" in table
    assert "| medvol, lowest – highest of 2 seeds (pooled means) | 0.7000 – 0.7667 |" in table
    assert (
        "| fold 1 (1 case), mean over 2 seeds (lowest – highest seed) | 0.7000 (0.5000 – 0.9000) |" in table
    )
    assert "Cross-validation mean as nnU-Net's cross-validation summary computes it" in table
    assert "Training time (sum of epoch times): fold 0 seed 0: 5.0 min, fold 0 seed 1: 5.0 min" in table
    assert "medvol, 5-fold" not in table
    whole = format_results(_cv_results(tmp_path / "of2", 2))
    assert "| medvol, 2-fold cross-validation (folds 0, 1): per-case mean over the 3 pooled" in whole
    assert "not a" not in whole
