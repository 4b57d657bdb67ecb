"""Metrics: hand-computed values, agreement with scikit-learn and MONAI, empty-mask policies, CIs."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from medvol.metrics import (
    ConfidenceInterval,
    EmptyPolicy,
    SegmentationAccumulator,
    accuracy,
    average_surface_distance_mm,
    balanced_accuracy,
    binary_auc,
    bootstrap_ci,
    brier_score,
    classification_metrics,
    confusion_matrix,
    dice_per_class,
    expected_calibration_error,
    field_of_view_diagonal_mm,
    hausdorff_distance_mm,
    mean_ci,
    multiclass_auc,
    segmentation_case_metrics,
    surface_distances_mm,
    volume_difference,
    volume_ml,
)

# ----------------------------------------------------------------------------------------------
# Segmentation
# ----------------------------------------------------------------------------------------------

ANISOTROPIC_MM = (0.5, 2.0, 3.0)


def _cube(shape: tuple[int, int, int], start: tuple[int, int, int], size: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


@pytest.fixture
def offset_cubes() -> tuple[np.ndarray, np.ndarray]:
    """4×4×4 cubes, the second shifted by one voxel along axis 0, in a 10³ grid.

    Surfaces hold 4³ − 2³ = 56 voxels each. With the shift axis the finest one (0.5 mm, finer
    than 2 and 3 mm), 20 surface voxels of each cube (the 16 of its leading face and the 4 inner
    ones of its trailing face) lie exactly 0.5 mm from the other surface and the other 36 lie on
    it. So HD95 = HD = 0.5 mm and ASSD = 0.5 × 40 / 112 = 0.5 × 5/14 mm.
    """
    return _cube((10, 10, 10), (2, 2, 2), 4), _cube((10, 10, 10), (3, 2, 2), 4)


def test_dice_of_offset_cubes_is_the_overlap_share(offset_cubes: tuple[np.ndarray, np.ndarray]) -> None:
    prediction, target = offset_cubes
    labels_p, labels_g = 2 * prediction.astype(np.int16), 2 * target.astype(np.int16)
    # 3 of 4 slabs overlap: 2 × 48 / (64 + 64)
    assert dice_per_class(labels_p, labels_g, [2]) == {2: 0.75}
    assert segmentation_case_metrics(labels_p, labels_g, [2], ANISOTROPIC_MM)[2]["dice"] == 0.75


def test_hd95_and_assd_of_offset_cubes_in_mm(offset_cubes: tuple[np.ndarray, np.ndarray]) -> None:
    prediction, target = offset_cubes
    assert hausdorff_distance_mm(prediction, target, ANISOTROPIC_MM) == pytest.approx(0.5)
    assert hausdorff_distance_mm(prediction, target, ANISOTROPIC_MM, percentile=100) == pytest.approx(0.5)
    assert average_surface_distance_mm(prediction, target, ANISOTROPIC_MM) == pytest.approx(0.5 * 5 / 14)
    to_target, to_prediction = surface_distances_mm(prediction, target, ANISOTROPIC_MM)
    assert to_target.shape == to_prediction.shape == (56,)
    assert np.count_nonzero(to_target) == np.count_nonzero(to_prediction) == 20


def test_distances_follow_the_axis_of_each_spacing(offset_cubes: tuple[np.ndarray, np.ndarray]) -> None:
    """The same cubes shifted along axis 2 with the 0.5 mm spacing moved to axis 2: same numbers."""
    prediction, target = (np.moveaxis(mask, 0, 2) for mask in offset_cubes)
    spacing = (3.0, 2.0, 0.5)
    assert hausdorff_distance_mm(prediction, target, spacing) == pytest.approx(0.5)
    assert average_surface_distance_mm(prediction, target, spacing) == pytest.approx(0.5 * 5 / 14)


def test_distances_between_disjoint_small_cubes() -> None:
    """2×2×2 cubes (every voxel is surface) 3 voxels apart along axis 1 at 0.7 mm.

    Each cube has 4 voxels 2 × 0.7 = 1.4 mm and 4 voxels 3 × 0.7 = 2.1 mm from the other.
    """
    prediction, target = _cube((8, 10, 8), (3, 2, 3), 2), _cube((8, 10, 8), (3, 5, 3), 2)
    spacing = (1.0, 0.7, 2.0)
    assert hausdorff_distance_mm(prediction, target, spacing) == pytest.approx(2.1)
    assert hausdorff_distance_mm(prediction, target, spacing, percentile=50) == pytest.approx(1.75)
    assert average_surface_distance_mm(prediction, target, spacing) == pytest.approx(1.75)
    result = segmentation_case_metrics(prediction.astype(int), target.astype(int), [1], spacing)[1]
    assert result["dice"] == 0.0
    assert result["hd95_mm"] == pytest.approx(2.1)
    assert result["assd_mm"] == pytest.approx(1.75)


def test_identical_masks_touching_the_image_border_are_zero_apart() -> None:
    mask = np.zeros((6, 7, 5), dtype=bool)
    mask[:4, 2:, :] = True
    result = segmentation_case_metrics(mask.astype(int), mask.astype(int), [1], (1.0, 1.0, 2.5))[1]
    assert (result["dice"], result["hd95_mm"], result["assd_mm"]) == (1.0, 0.0, 0.0)


def test_surface_distances_agree_with_monai() -> None:
    """Same conventions as MONAI 1.6.1 (edges by erosion, max of directed percentiles, pooled mean)."""
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    from scipy import ndimage

    rng = np.random.default_rng(3)
    field = ndimage.gaussian_filter(rng.random((24, 22, 16)), 2.0)
    prediction = field > np.quantile(field, 0.75)
    target = np.roll(field, (2, -1, 1), axis=(0, 1, 2)) > np.quantile(field, 0.7)
    target[:3, :, :4] = True  # touches three faces of the image
    spacing = (0.7, 1.3, 2.9)
    as_tensor = [torch.from_numpy(m)[None, None].float() for m in (prediction, target)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        hd95 = monai_metrics.compute_hausdorff_distance(
            *as_tensor, include_background=True, percentile=95, spacing=spacing
        )
        assd = monai_metrics.compute_average_surface_distance(
            *as_tensor, include_background=True, symmetric=True, spacing=spacing
        )
    assert hausdorff_distance_mm(prediction, target, spacing) == pytest.approx(float(hd95), rel=1e-5)
    assert average_surface_distance_mm(prediction, target, spacing) == pytest.approx(float(assd), rel=1e-5)


def test_volumes_in_millilitres() -> None:
    spacing = (0.5, 0.5, 2.0)  # 0.5 mm³ per voxel
    target = np.zeros((20, 20, 20), dtype=np.uint8)
    target[:10, :20, :20] = 1  # 4000 voxels = 2000 mm³ = 2 mL
    prediction = np.zeros_like(target)
    prediction[:10, :20, :20] = 1
    prediction[10:15, :10, :20] = 1  # + 1000 voxels = 0.5 mL
    assert volume_ml(target, spacing) == pytest.approx(2.0)
    assert volume_difference(prediction, target, spacing) == pytest.approx((0.5, 0.25))
    result = segmentation_case_metrics(prediction, target, [1], spacing)[1]
    assert result["volume_prediction_ml"] == pytest.approx(2.5)
    assert result["volume_target_ml"] == pytest.approx(2.0)
    assert result["volume_difference_ml"] == pytest.approx(0.5)
    assert result["relative_volume_difference"] == pytest.approx(0.25)
    assert volume_difference(target, prediction, spacing) == pytest.approx((-0.5, -0.2))


@pytest.fixture
def empty_cases() -> tuple[np.ndarray, np.ndarray]:
    """Class 1 in neither map, class 2 only in the target, class 3 only in the prediction."""
    prediction = np.zeros((10, 10, 10), dtype=np.int16)
    target = np.zeros_like(prediction)
    target[2:5, 2:5, 2:5] = 2
    prediction[6:8, 6:8, 6:8] = 3
    return prediction, target


def test_default_policy_leaves_undefined_values_nan(empty_cases: tuple[np.ndarray, np.ndarray]) -> None:
    prediction, target = empty_cases
    result = segmentation_case_metrics(prediction, target, [1, 2, 3], ANISOTROPIC_MM)
    neither, missed, spurious = result[1], result[2], result[3]
    assert math.isnan(neither["dice"]) and math.isnan(neither["hd95_mm"]) and math.isnan(neither["assd_mm"])
    assert neither["prediction_empty"] and neither["target_empty"]
    assert neither["volume_difference_ml"] == 0.0 and math.isnan(neither["relative_volume_difference"])
    assert missed["dice"] == 0.0 and math.isnan(missed["hd95_mm"]) and math.isnan(missed["assd_mm"])
    assert missed["prediction_empty"] and not missed["target_empty"]
    assert missed["relative_volume_difference"] == -1.0
    assert spurious["dice"] == 0.0 and math.isnan(spurious["hd95_mm"])
    assert math.isnan(spurious["relative_volume_difference"])
    empty = np.zeros((4, 4, 4), dtype=bool)
    assert math.isnan(hausdorff_distance_mm(empty, empty, (1.0, 1.0, 1.0)))


def test_configured_policy_gives_perfect_absent_calls_and_worst_case_distances(
    empty_cases: tuple[np.ndarray, np.ndarray],
) -> None:
    prediction, target = empty_cases
    policy = EmptyPolicy(both_empty_dice=1.0, both_empty_distance_mm=0.0, one_empty_distance_mm="diagonal")
    result = segmentation_case_metrics(prediction, target, [1, 2, 3], ANISOTROPIC_MM, policy)
    diagonal = math.sqrt(5.0**2 + 20.0**2 + 30.0**2)  # 10 voxels of 0.5, 2 and 3 mm
    assert field_of_view_diagonal_mm(prediction.shape, ANISOTROPIC_MM) == pytest.approx(diagonal)
    assert (result[1]["dice"], result[1]["hd95_mm"], result[1]["assd_mm"]) == (1.0, 0.0, 0.0)
    for value in (2, 3):
        assert result[value]["dice"] == 0.0
        assert result[value]["hd95_mm"] == pytest.approx(diagonal)
        assert result[value]["assd_mm"] == pytest.approx(diagonal)
    fixed = EmptyPolicy(one_empty_distance_mm=373.13)
    assert hausdorff_distance_mm(prediction == 2, target == 2, ANISOTROPIC_MM, policy=fixed) == 373.13
    assert average_surface_distance_mm(prediction == 3, target == 3, ANISOTROPIC_MM, policy=fixed) == 373.13


def test_policy_is_recorded_and_read_back() -> None:
    policy = EmptyPolicy(both_empty_dice=1.0, one_empty_distance_mm="diagonal")
    written = json.dumps(policy.to_dict())
    assert set(json.loads(written)) == {"both_empty_dice", "both_empty_distance_mm", "one_empty_distance_mm"}
    restored = EmptyPolicy.from_dict(json.loads(written))
    assert restored.both_empty_dice == 1.0 and restored.one_empty_distance_mm == "diagonal"
    assert math.isnan(restored.both_empty_distance_mm)
    assert math.isnan(EmptyPolicy.from_dict({"both_empty_dice": None}).both_empty_dice)


@pytest.mark.parametrize(
    "settings",
    [{"both_empty_dice": 2.0}, {"both_empty_distance_mm": -1.0}, {"one_empty_distance_mm": "max"}],
)
def test_policy_rejects_meaningless_values(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        EmptyPolicy(**settings)  # type: ignore[arg-type]


def test_segmentation_input_errors_are_clear() -> None:
    mask = np.ones((4, 4, 4), dtype=bool)
    with pytest.raises(ValueError, match="differ in shape"):
        segmentation_case_metrics(mask, mask[:3], [1], (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing_mm"):
        segmentation_case_metrics(mask, mask, [1], (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing_mm"):
        hausdorff_distance_mm(mask, mask, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances_mm(mask, np.zeros_like(mask), (1.0, 1.0, 1.0))


def test_accumulator_summarises_cases_and_counts_undefined(
    offset_cubes: tuple[np.ndarray, np.ndarray], empty_cases: tuple[np.ndarray, np.ndarray]
) -> None:
    prediction, target = (m.astype(np.int16) for m in offset_cubes)
    accumulator = SegmentationAccumulator(classes=[1])
    accumulator.add("a", prediction, target, ANISOTROPIC_MM)
    accumulator.add("b", target, target, ANISOTROPIC_MM)
    accumulator.add("c", *empty_cases, ANISOTROPIC_MM)  # class 1 in neither map: Dice NaN
    accumulator.add("c", *empty_cases, ANISOTROPIC_MM)  # same id again replaces
    summary = accumulator.summary(n_resamples=200)
    assert summary["cases"] == 3
    assert summary["policy"] == pytest.approx(EmptyPolicy().to_dict(), nan_ok=True)
    dice = summary["classes"][1]["dice"]
    assert dice["mean"] == pytest.approx((0.75 + 1.0) / 2)
    assert (dice["n"], dice["n_undefined"]) == (2, 1)
    assert np.isnan(dice["low"]) and np.isnan(dice["high"])  # two defined cases: no interval
    assert summary["classes"][1]["hd95_mm"]["mean"] == pytest.approx(0.25)
    assert summary["classes"][1]["n_target_empty"] == 1
    json.dumps(summary)  # writable as it is


# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def binary_case() -> tuple[np.ndarray, np.ndarray]:
    """10 cases, threshold 0.5: TP = 3, FN = 1, FP = 2, TN = 4."""
    targets = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    positive = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.55, 0.4, 0.2, 0.1, 0.05])
    return targets, np.stack([1 - positive, positive], axis=1)


def test_binary_metrics_from_hand_counted_confusion(binary_case: tuple[np.ndarray, np.ndarray]) -> None:
    targets, probabilities = binary_case
    result = classification_metrics(targets, probabilities)
    assert result["confusion_matrix"] == [[4, 2], [1, 3]]
    assert result["sensitivity"] == pytest.approx(3 / 4)
    assert result["specificity"] == pytest.approx(4 / 6)
    assert result["ppv"] == pytest.approx(3 / 5)
    assert result["npv"] == pytest.approx(4 / 5)
    assert result["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert result["accuracy"] == pytest.approx(7 / 10)
    assert result["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    # AUC: of 24 positive–negative pairs, 0.6 loses to 0.7 and 0.3 loses to 0.7, 0.55 and 0.4
    assert result["auc"] == pytest.approx(20 / 24)
    assert result["auc"] == pytest.approx(skm.roc_auc_score(targets, probabilities[:, 1]))
    assert result["brier"] == pytest.approx(np.mean((probabilities[:, 1] - targets) ** 2))
    assert (result["threshold"], result["n_cases"], result["n_classes"]) == (0.5, 10, 2)
    json.dumps(result)


def test_binary_threshold_moves_the_operating_point(binary_case: tuple[np.ndarray, np.ndarray]) -> None:
    targets, probabilities = binary_case
    strict = classification_metrics(targets, probabilities, threshold=0.75)
    assert strict["confusion_matrix"] == [[6, 0], [2, 2]]
    assert (strict["sensitivity"], strict["specificity"], strict["ppv"]) == (0.5, 1.0, 1.0)
    assert strict["auc"] == classification_metrics(targets, probabilities)["auc"]
    # The threshold is inclusive, as in accuracy(): p = 0.6 is positive at 0.6.
    assert confusion_matrix(targets, probabilities, threshold=0.6).tolist() == [[5, 1], [1, 3]]


def test_class_one_probabilities_alone_mean_the_same(binary_case: tuple[np.ndarray, np.ndarray]) -> None:
    targets, probabilities = binary_case
    full = classification_metrics(targets, probabilities)
    assert classification_metrics(targets, probabilities[:, 1]) == full


def test_binary_rates_without_a_denominator_are_nan() -> None:
    negatives = np.zeros(4, dtype=int)
    result = classification_metrics(negatives, np.array([0.1, 0.2, 0.3, 0.4]))
    assert math.isnan(result["sensitivity"]) and math.isnan(result["ppv"]) and math.isnan(result["auc"])
    assert math.isnan(result["f1"])
    assert (result["specificity"], result["npv"], result["accuracy"]) == (1.0, 1.0, 1.0)


def test_multiclass_macro_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    targets = np.tile([0, 1, 2], 20)
    logits = rng.normal(size=(60, 3)) + 1.5 * np.eye(3)[targets]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predicted = probabilities.argmax(axis=1)
    result = classification_metrics(targets, probabilities, threshold=0.9)  # threshold unused
    assert result["threshold"] is None
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(targets, predicted))
    assert result["sensitivity"] == pytest.approx(skm.recall_score(targets, predicted, average="macro"))
    assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(targets, predicted))
    assert result["ppv"] == pytest.approx(skm.precision_score(targets, predicted, average="macro"))
    assert result["f1"] == pytest.approx(skm.f1_score(targets, predicted, average="macro"))
    assert result["auc"] == pytest.approx(skm.roc_auc_score(targets, probabilities, multi_class="ovr"))
    counts = skm.confusion_matrix(targets, predicted)
    assert result["confusion_matrix"] == counts.tolist()
    specificities, npvs = [], []
    for k in range(3):
        tp = counts[k, k]
        fp, fn = counts[:, k].sum() - tp, counts[k, :].sum() - tp
        tn = counts.sum() - tp - fp - fn
        specificities.append(tn / (tn + fp))
        npvs.append(tn / (tn + fn))
    assert result["specificity"] == pytest.approx(np.mean(specificities))
    assert result["npv"] == pytest.approx(np.mean(npvs))


def test_multiclass_class_never_predicted_counts_against_f1_not_ppv() -> None:
    targets = np.array([0, 0, 1, 1, 2, 2])
    rows = {0: [0.8, 0.1, 0.1], 1: [0.1, 0.8, 0.1]}
    probabilities = np.array([rows[k] for k in (0, 0, 1, 1, 1, 0)])  # class 2 is never predicted
    result = classification_metrics(targets, probabilities)
    assert result["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [1, 1, 0]]
    assert result["ppv"] == pytest.approx((2 / 3 + 2 / 3) / 2)  # class 2 never predicted: left out
    assert result["sensitivity"] == pytest.approx((1 + 1 + 0) / 3)
    assert result["f1"] == pytest.approx((0.8 + 0.8 + 0.0) / 3)


def test_ece_is_zero_when_calibrated_and_known_when_not() -> None:
    calibrated = np.array([0.25] * 4 + [0.75] * 4)
    assert expected_calibration_error(np.array([1, 0, 0, 0, 1, 1, 1, 0]), calibrated) == pytest.approx(0.0)
    overconfident = np.full(10, 0.9)
    assert expected_calibration_error(np.array([1, 0] * 5), overconfident) == pytest.approx(0.4)
    # two bins: half the cases at 0.15 (none positive), half at 0.85 (half positive)
    targets, predicted = np.array([0, 0, 1, 0]), np.array([0.15, 0.15, 0.85, 0.85])
    assert expected_calibration_error(targets, predicted) == pytest.approx(0.5 * 0.15 + 0.5 * 0.35)
    assert expected_calibration_error(targets, predicted, n_bins=1) == pytest.approx(abs(0.25 - 0.5))


def test_multiclass_ece_bins_the_confidence() -> None:
    probabilities = np.tile([0.8, 0.1, 0.1], (4, 1))  # confidence 0.8, argmax class 0
    targets = np.array([0, 0, 1, 2])  # accuracy 0.5
    assert expected_calibration_error(targets, probabilities) == pytest.approx(0.3)
    assert classification_metrics(targets, probabilities)["ece"] == pytest.approx(0.3)


def test_brier_by_hand() -> None:
    assert brier_score(np.array([0, 1]), np.array([0.2, 0.6])) == pytest.approx((0.2**2 + 0.4**2) / 2)
    probabilities = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    by_hand = ((0.2**2 + 0.1**2 + 0.1**2) + (0.2**2 + 0.3**2 + 0.1**2) + (0.1**2 + 0.1**2 + 0.2**2)) / 3
    assert brier_score(np.array([0, 1, 2]), probabilities) == pytest.approx(by_hand)


def test_existing_helpers_keep_their_behaviour(binary_case: tuple[np.ndarray, np.ndarray]) -> None:
    targets, probabilities = binary_case
    assert accuracy(targets, probabilities) == pytest.approx(0.7)
    assert accuracy(targets, probabilities, threshold=0.75) == pytest.approx(0.8)
    assert multiclass_auc(targets, probabilities) == binary_auc(targets, probabilities[:, 1])
    assert math.isnan(binary_auc(np.zeros(3), np.array([0.1, 0.2, 0.3])))
    three = np.full((3, 3), 1 / 3)
    assert math.isnan(multiclass_auc(np.array([0, 1, 1]), three))
    assert balanced_accuracy(targets, probabilities) == pytest.approx((3 / 4 + 4 / 6) / 2)


@pytest.mark.parametrize(
    ("targets", "probabilities", "message"),
    [
        (np.array([0, 1]), np.array([[0.5, 0.6], [0.5, 0.5]]), "sum to 1"),
        (np.array([0, 2]), np.array([[0.5, 0.5], [0.5, 0.5]]), "class indices"),
        (np.array([0, 1, 1]), np.array([0.5, 0.5]), "do not match"),
        (np.array([0, 1]), np.array([0.5, 1.5]), "within"),
    ],
)
def test_classification_input_errors_are_clear(
    targets: np.ndarray, probabilities: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(targets, probabilities)


# ----------------------------------------------------------------------------------------------
# Confidence intervals
# ----------------------------------------------------------------------------------------------


def test_bootstrap_ci_gives_no_interval_below_three_cases() -> None:
    for values in ([0.8], [0.8, 0.6]):
        interval = bootstrap_ci(np.array(values), np.mean, n_resamples=100)
        assert interval.estimate == pytest.approx(np.mean(values))
        assert np.isnan(interval.low) and np.isnan(interval.high) and interval.n_resamples == 0
    assert np.isfinite(bootstrap_ci(np.array([0.8, 0.6, 0.7]), np.mean, n_resamples=100).low)


def test_bootstrap_ci_contains_the_estimate_and_is_reproducible() -> None:
    values = np.random.default_rng(1).normal(0.8, 0.1, size=60)
    interval = bootstrap_ci(values, np.mean, n_resamples=1000, seed=7)
    estimate, low, high = interval
    assert estimate == pytest.approx(values.mean())
    assert low < estimate < high
    assert (interval.n, interval.n_resamples, interval.n_undefined) == (60, 1000, 0)
    assert bootstrap_ci(values, np.mean, n_resamples=1000, seed=7) == interval
    assert bootstrap_ci(values, np.mean, n_resamples=1000, seed=8) != interval
    # roughly the normal-theory interval of a mean
    assert high - low == pytest.approx(2 * 1.96 * values.std(ddof=1) / math.sqrt(60), rel=0.15)
    assert bootstrap_ci(list(values), np.mean, n_resamples=1000, seed=7) == interval


def test_bootstrap_ci_narrows_with_more_cases() -> None:
    rng = np.random.default_rng(2)
    few = bootstrap_ci(rng.normal(size=25), np.mean, n_resamples=500)
    many = bootstrap_ci(rng.normal(size=400), np.mean, n_resamples=500)
    assert (many.high - many.low) < 0.5 * (few.high - few.low)


def test_bootstrap_resamples_cases_in_pairs() -> None:
    targets = np.arange(30) % 2
    interval = bootstrap_ci((targets, targets.copy()), lambda t, p: float(np.mean(t == p)), n_resamples=200)
    assert tuple(interval) == (1.0, 1.0, 1.0)


def test_bootstrap_skips_and_counts_single_class_resamples() -> None:
    rng = np.random.default_rng(4)
    targets = np.array([1, 1] + [0] * 18)
    scores = np.clip(0.3 * targets + rng.uniform(0, 0.7, size=20), 0, 1)
    single_class = 0

    def auc(t: np.ndarray, p: np.ndarray) -> float:
        nonlocal single_class
        single_class += len(np.unique(t)) < 2
        return binary_auc(t, p)

    with pytest.warns(RuntimeWarning, match="undefined on"):
        interval = bootstrap_ci((targets, scores), auc, n_resamples=500, seed=0)
    assert interval.n_undefined == single_class > 0  # (18/20)^20 ≈ 12% expected
    assert 0.04 < interval.n_undefined / 500 < 0.25
    assert math.isfinite(interval.low) and interval.low <= interval.estimate <= interval.high <= 1.0
    assert interval.to_dict()["n_undefined"] == single_class


def test_bootstrap_of_an_undefined_estimate_is_nan() -> None:
    interval = bootstrap_ci((np.zeros(5), np.linspace(0, 1, 5)), binary_auc, n_resamples=50)
    assert all(math.isnan(v) for v in interval)
    with pytest.raises(ValueError, match="rows"):
        bootstrap_ci((np.zeros(5), np.zeros(4)), binary_auc)


def test_mean_ci_is_the_student_t_interval() -> None:
    values = [0.80, 0.82, 0.85, 0.79, 0.84]
    # mean 0.82; s² = (4 + 0 + 9 + 9 + 4)e-4 / 4; t(0.975, 4) = 2.776445
    half = 2.776445 * math.sqrt(26e-4 / 4) / math.sqrt(5)
    interval = mean_ci(values)
    assert tuple(interval) == pytest.approx((0.82, 0.82 - half, 0.82 + half), abs=1e-6)
    assert (interval.method, interval.n) == ("student t", 5)
    mean, low, high = mean_ci([0.7, 0.7, 0.7])
    assert (mean, low, high) == pytest.approx((0.7, 0.7, 0.7))


def test_mean_ci_of_one_value_has_no_interval() -> None:
    interval = mean_ci([0.91])
    assert interval.estimate == 0.91 and math.isnan(interval.low) and math.isnan(interval.high)
    assert isinstance(interval, ConfidenceInterval)
    with pytest.raises(ValueError, match="non-finite"):
        mean_ci([0.9, float("nan")])
    with pytest.raises(ValueError, match="at least one"):
        mean_ci([])
