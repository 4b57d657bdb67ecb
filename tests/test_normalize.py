"""Intensity normalisers, checked against numpy by hand on small arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medvol.transforms.normalize import CTWindow, Normalizer, NotFittedError, PercentileClip, ZScore
from medvol.volume import Volume


def volume(array: np.ndarray) -> Volume:
    array = np.asarray(array)
    return Volume(array.reshape(1, *array.shape) if array.ndim == 3 else array, np.diag([1.0, 2.0, 3.0, 1.0]))


@pytest.fixture
def training() -> tuple[list[Volume], list[Volume]]:
    """Two CT-like scans (HU) with labels marking their foreground."""
    rng = np.random.default_rng(0)
    scans, labels = [], []
    for offset in (0.0, 200.0):
        array = rng.normal(-800.0, 50.0, size=(6, 7, 8))
        mask = np.zeros((6, 7, 8), dtype=np.uint8)
        mask[2:5, 2:6, 1:7] = 1
        array[mask > 0] = rng.normal(40.0 + offset, 30.0, size=int(mask.sum()))
        scans.append(volume(array.astype(np.int16)))
        labels.append(volume(mask))
    return scans, labels


def test_ct_window_clips_and_scales_to_unit_range() -> None:
    array = np.array([-2000, -1000, -160, 0, 240, 3000], dtype=np.int16).reshape(1, 2, 3)
    window = CTWindow(window_hu=(-160.0, 240.0))
    assert window.fit([]) is window  # nothing to learn, same interface
    result = window.transform(volume(array))
    expected = np.clip((array.astype(np.float64) + 160.0) / 400.0, 0.0, 1.0)
    assert result.array.dtype == np.float32
    np.testing.assert_allclose(result.array[0], expected, rtol=1e-6)
    np.testing.assert_array_equal(result.affine, np.diag([1.0, 2.0, 3.0, 1.0]))
    assert result.meta["normalization"]["params"] == {"window_hu": [-160.0, 240.0]}
    with pytest.raises(ValueError, match="lower < upper"):
        CTWindow(window_hu=(100.0, -100.0))


def test_per_scan_zscore_uses_each_scans_own_statistics() -> None:
    array = np.arange(24, dtype=np.float64).reshape(2, 3, 4) ** 1.5
    result = ZScore(per_scan=True).transform(volume(array))  # no fit needed per scan
    np.testing.assert_allclose(result.array[0], (array - array.mean()) / array.std(), rtol=1e-5, atol=1e-6)
    assert result.array.dtype == np.float32
    assert result.meta["normalization"]["scan_statistics"]["mean"] == pytest.approx([array.mean()])


def test_per_scan_zscore_over_the_foreground_only(training: tuple[list[Volume], list[Volume]]) -> None:
    scan, label = training[0][0], training[1][0]
    values = scan.array[label.array > 0].astype(np.float64)
    result = ZScore(per_scan=True, use_foreground_mask=True).transform(scan, label)
    expected = (scan.array.astype(np.float64) - values.mean()) / values.std()
    np.testing.assert_allclose(result.array, expected, rtol=1e-5, atol=1e-5)
    # Without a mask the nonzero voxels are the foreground.
    nonzero = np.array([[[0.0, 0.0], [2.0, 4.0]]])
    result = ZScore(per_scan=True, use_foreground_mask=True).transform(volume(nonzero))
    np.testing.assert_allclose(result.array[0], (nonzero - 3.0) / 1.0)


def test_fitted_zscore_learns_training_foreground_statistics(
    training: tuple[list[Volume], list[Volume]],
) -> None:
    scans, labels = training
    normalizer = ZScore(per_scan=False, use_foreground_mask=True).fit(scans, labels)
    pooled = np.concatenate([s.array[m.array > 0] for s, m in zip(scans, labels, strict=True)]).astype(float)
    np.testing.assert_allclose(normalizer.mean_, [pooled.mean()])
    np.testing.assert_allclose(normalizer.std_, [pooled.std()])
    np.testing.assert_allclose(normalizer.lower_, [np.percentile(pooled, 0.5)])
    np.testing.assert_allclose(normalizer.upper_, [np.percentile(pooled, 99.5)])

    # An unseen scan with quite different intensities is normalised with the training statistics only.
    unseen = volume(np.linspace(-3000.0, 3000.0, 60).reshape(3, 4, 5))
    result = normalizer.transform(unseen)
    clipped = np.clip(unseen.array, np.percentile(pooled, 0.5), np.percentile(pooled, 99.5))
    np.testing.assert_allclose(result.array, (clipped - pooled.mean()) / pooled.std(), rtol=1e-5, atol=1e-5)
    assert result.array.min() == pytest.approx((np.percentile(pooled, 0.5) - pooled.mean()) / pooled.std())


def test_fitted_normalisers_refuse_to_transform_before_fit() -> None:
    for normalizer in (ZScore(per_scan=False), PercentileClip()):
        with pytest.raises(NotFittedError, match="not fitted: call fit"):
            normalizer.transform(volume(np.ones((2, 2, 2))))


def test_percentile_clip_fitted_and_per_scan() -> None:
    first = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    second = first * 3.0
    clip = PercentileClip(lower=1.0, upper=90.0).fit([volume(first), volume(second)])
    pooled = np.concatenate([first.ravel(), second.ravel()])
    np.testing.assert_allclose([clip.lower_[0], clip.upper_[0]], np.percentile(pooled, (1.0, 90.0)))
    result = clip.transform(volume(first * 10))
    np.testing.assert_allclose(result.array[0], np.clip(first * 10, *np.percentile(pooled, (1.0, 90.0))))

    per_scan = PercentileClip(lower=1.0, upper=90.0, per_scan=True).transform(volume(second))
    np.testing.assert_allclose(per_scan.array[0], np.clip(second, *np.percentile(second, (1.0, 90.0))))


def test_statistics_are_per_channel() -> None:
    rng = np.random.default_rng(1)
    array = np.stack([rng.normal(0, 1, (4, 4, 4)), rng.normal(100, 10, (4, 4, 4))])
    normalizer = ZScore(per_scan=False, clip_percentiles=None).fit([volume(array)])
    np.testing.assert_allclose(normalizer.mean_, array.reshape(2, -1).mean(axis=1))
    result = normalizer.transform(volume(array))
    np.testing.assert_allclose(result.array.reshape(2, -1).mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(result.array.reshape(2, -1).std(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="fitted on 2 channel"):
        normalizer.transform(volume(array[:1]))


@pytest.mark.parametrize(
    "normalizer",
    [CTWindow(window_hu=(-100.0, 300.0)), ZScore(per_scan=False, use_foreground_mask=True), PercentileClip()],
)
def test_saved_normaliser_transforms_like_the_original(
    normalizer: Normalizer, training: tuple[list[Volume], list[Volume]]
) -> None:
    scans, labels = training
    normalizer.fit(scans, labels)
    restored = Normalizer.from_dict(json.loads(json.dumps(normalizer.to_dict())))
    assert type(restored) is type(normalizer)
    assert restored.to_dict() == normalizer.to_dict()
    np.testing.assert_array_equal(restored.transform(scans[1]).array, normalizer.transform(scans[1]).array)


def test_from_dict_refuses_another_type() -> None:
    with pytest.raises(ValueError, match="cannot build a ZScore"):
        ZScore.from_dict(CTWindow().to_dict())
