"""Intensity normalisers in scikit-learn style.

``fit(volumes, masks) -> self`` learns from training volumes,
``transform(volume, mask) -> Volume`` applies what was learned; constructor
arguments are the parameters and learned attributes end in ``_`` (they are
arrays with one value per channel). ``to_dict()``/``Normalizer.from_dict()``
save and restore both with a run, so inference uses the training statistics.
``transform`` on a normaliser that needs fitting and was not fitted raises
``sklearn.exceptions.NotFittedError``. Outputs are float32; the input's geometry
and meta are kept and ``meta["normalization"]`` says what was done.

Foreground voxels (``use_foreground_mask=True``) are those where the mask
(e.g. the label) is > 0 when a mask is given, else where any image channel is
nonzero (the zero background around MR crops, as in nnU-Net).

- ``CTWindow``: clip to a window in HU and scale to [0, 1]; nothing to learn.
- ``ZScore``: ``per_scan=True`` uses each scan's own mean and standard
  deviation; ``per_scan=False`` is nnU-Net's CT scheme: mean, standard
  deviation and the 0.5/99.5 percentiles of the training foreground voxels
  pooled over all training volumes; a scan is clipped to the percentiles, then
  z-scored with the training mean and standard deviation.
- ``PercentileClip``: clip to percentiles, learned on the training volumes or
  taken per scan.

Fitting pools the selected voxels of all training volumes in memory (exact
percentiles); for very large training sets, fit on a subset of volumes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from medvol.volume import Volume

__all__ = ["CTWindow", "Normalizer", "NotFittedError", "PercentileClip", "ZScore"]

N = TypeVar("N", bound="Normalizer")

_MIN_STD = 1e-8


class Normalizer(BaseEstimator):
    """Base class: ``fit`` / ``transform`` / ``to_dict`` / ``from_dict``."""

    def fit(self: N, volumes: Iterable[Volume], masks: Iterable[Volume | None] | None = None) -> N:
        """Learn from training volumes (arrays ``(C, X, Y, Z)``); returns ``self``.

        Args:
            volumes: the training scans.
            masks: their foreground masks (e.g. labels, ``(1, X, Y, Z)``), used
                when ``use_foreground_mask`` is set; ``None`` for the nonzero rule.
        """
        return self

    def transform(self, volume: Volume, mask: Volume | None = None) -> Volume:
        """Normalise one scan, array ``(C, X, Y, Z)``; returns a float32 volume on the same grid.

        Args:
            volume: the scan.
            mask: its foreground mask, for per-scan statistics with
                ``use_foreground_mask`` (otherwise unused).

        Raises:
            NotFittedError: the normaliser learns statistics and was not fitted.
            ValueError: the scan's channel count differs from the training volumes'.
        """
        if self.needs_fit():
            check_is_fitted(
                self,
                msg=f"this {type(self).__name__} is not fitted: call fit(training_volumes) first, "
                "or restore learned statistics with Normalizer.from_dict",
            )
        array = volume.array.astype(np.float32)
        normalized, statistics = self._transform(array, volume, mask)
        record = self.to_dict()
        if statistics:
            record["scan_statistics"] = {key: value.tolist() for key, value in statistics.items()}
        meta = {**volume.meta, "normalization": record}
        return Volume(normalized.astype(np.float32, copy=False), volume.affine, meta)

    def to_dict(self) -> dict[str, Any]:
        """Parameters and learned attributes as plain JSON-serialisable values."""
        learned = {
            key: np.asarray(value).tolist()
            for key, value in vars(self).items()
            if key.endswith("_") and not key.startswith("_")
        }
        params = {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in self.get_params().items()
        }
        return {"type": type(self).__name__, "params": params, "learned": learned}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalizer:
        """Rebuild a normaliser (fitted or not) from ``to_dict`` output.

        Called on ``Normalizer`` it builds whichever type ``data`` names; called
        on a subclass it also checks the type.
        """
        kind = _NORMALIZERS.get(data.get("type", ""))
        if kind is None or not issubclass(kind, cls):
            raise ValueError(f"cannot build a {cls.__name__} from a saved {data.get('type')!r}")
        normalizer = kind(**data["params"])
        for key, value in data.get("learned", {}).items():
            setattr(normalizer, key, np.asarray(value, dtype=np.float64))
        return normalizer

    def needs_fit(self) -> bool:
        """True when ``transform`` needs statistics learned by ``fit``."""
        return False

    def _transform(
        self, array: np.ndarray, volume: Volume, mask: Volume | None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        raise NotImplementedError


class CTWindow(Normalizer):
    """Clip CT to a window in Hounsfield units and scale it to [0, 1].

    Args:
        window_hu: ``(lower, upper)`` HU; ``lower`` maps to 0 and ``upper`` to 1.
    """

    def __init__(self, window_hu: tuple[float, float] = (-1000.0, 1000.0)) -> None:
        if len(window_hu) != 2 or not window_hu[0] < window_hu[1]:
            raise ValueError(f"window_hu must be (lower, upper) with lower < upper, got {window_hu}")
        self.window_hu = window_hu

    def _transform(
        self, array: np.ndarray, volume: Volume, mask: Volume | None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        lower, upper = (np.float32(value) for value in self.window_hu)
        return (np.clip(array, lower, upper) - lower) / (upper - lower), {}


class ZScore(Normalizer):
    """Subtract the mean and divide by the standard deviation, per channel.

    Args:
        per_scan: statistics of each scan itself (nothing to learn), or
            learned over the training volumes by ``fit``.
        use_foreground_mask: statistics over foreground voxels only (see the
            module docstring); the whole scan is normalised either way.
        clip_percentiles: for ``per_scan=False``, the percentiles (0–100) of
            the training voxels to clip to before z-scoring; ``None`` for no
            clipping.

    Attributes:
        mean_: training mean per channel, ``(C,)`` (``per_scan=False`` only).
        std_: training standard deviation per channel, ``(C,)``.
        lower_: lower clip value per channel, ``(C,)`` (with ``clip_percentiles``).
        upper_: upper clip value per channel, ``(C,)``.
    """

    def __init__(
        self,
        per_scan: bool = True,
        use_foreground_mask: bool = False,
        clip_percentiles: tuple[float, float] | None = (0.5, 99.5),
    ) -> None:
        if clip_percentiles is not None:
            _check_percentiles(*clip_percentiles)
        self.per_scan = per_scan
        self.use_foreground_mask = use_foreground_mask
        self.clip_percentiles = clip_percentiles

    def fit(self, volumes: Iterable[Volume], masks: Iterable[Volume | None] | None = None) -> ZScore:
        if self.per_scan:
            return self
        pooled = _pooled_voxels(volumes, masks, self.use_foreground_mask)
        self.mean_ = np.array([values.mean(dtype=np.float64) for values in pooled])
        self.std_ = np.array([values.std(dtype=np.float64) for values in pooled])
        if self.clip_percentiles is not None:
            self.lower_, self.upper_ = np.array([np.percentile(v, self.clip_percentiles) for v in pooled]).T
        return self

    def needs_fit(self) -> bool:
        return not self.per_scan

    def _transform(
        self, array: np.ndarray, volume: Volume, mask: Volume | None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self.per_scan:
            values = _selected_voxels(volume, mask, self.use_foreground_mask)
            mean = np.array([v.mean(dtype=np.float64) for v in values])
            std = np.array([v.std(dtype=np.float64) for v in values])
            return _zscore(array, mean, std), {"mean": mean, "std": std}
        _check_channels(volume, self.mean_)
        if self.clip_percentiles is not None:
            array = np.clip(array, _per_channel(self.lower_), _per_channel(self.upper_))
        return _zscore(array, self.mean_, self.std_), {}


class PercentileClip(Normalizer):
    """Clip intensities to percentiles, per channel (values are not rescaled).

    Args:
        lower: lower percentile (0–100).
        upper: upper percentile (0–100).
        per_scan: percentiles of each scan itself, or learned by ``fit`` over
            the pooled training voxels.
        use_foreground_mask: percentiles of foreground voxels only.

    Attributes:
        lower_: lower clip value per channel, ``(C,)`` (``per_scan=False`` only).
        upper_: upper clip value per channel, ``(C,)``.
    """

    def __init__(
        self,
        lower: float = 0.5,
        upper: float = 99.5,
        per_scan: bool = False,
        use_foreground_mask: bool = False,
    ) -> None:
        _check_percentiles(lower, upper)
        self.lower = lower
        self.upper = upper
        self.per_scan = per_scan
        self.use_foreground_mask = use_foreground_mask

    def fit(self, volumes: Iterable[Volume], masks: Iterable[Volume | None] | None = None) -> PercentileClip:
        if self.per_scan:
            return self
        pooled = _pooled_voxels(volumes, masks, self.use_foreground_mask)
        self.lower_, self.upper_ = np.array([np.percentile(v, (self.lower, self.upper)) for v in pooled]).T
        return self

    def needs_fit(self) -> bool:
        return not self.per_scan

    def _transform(
        self, array: np.ndarray, volume: Volume, mask: Volume | None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self.per_scan:
            values = _selected_voxels(volume, mask, self.use_foreground_mask)
            lower, upper = np.array([np.percentile(v, (self.lower, self.upper)) for v in values]).T
            return np.clip(array, _per_channel(lower), _per_channel(upper)), {"lower": lower, "upper": upper}
        _check_channels(volume, self.lower_)
        return np.clip(array, _per_channel(self.lower_), _per_channel(self.upper_)), {}


_NORMALIZERS: dict[str, type[Normalizer]] = {
    kind.__name__: kind for kind in (CTWindow, ZScore, PercentileClip)
}


def _selected_voxels(volume: Volume, mask: Volume | None, use_foreground_mask: bool) -> list[np.ndarray]:
    """Per channel, the 1D values of the voxels statistics are taken over."""
    if not use_foreground_mask:
        return [channel.ravel() for channel in volume.array]
    if mask is None:
        foreground = np.any(volume.array != 0, axis=0)
    elif mask.shape != volume.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the volume's {volume.shape}")
    else:
        foreground = np.any(mask.array > 0, axis=0)
    if not foreground.any():
        raise ValueError(f"no foreground voxels in {volume.meta.get('source_path', 'a volume')}")
    return [channel[foreground] for channel in volume.array]


def _pooled_voxels(
    volumes: Iterable[Volume], masks: Iterable[Volume | None] | None, use_foreground_mask: bool
) -> list[np.ndarray]:
    """Per channel, the selected voxels of all training volumes concatenated."""
    volumes = list(volumes)
    mask_list = [None] * len(volumes) if masks is None else list(masks)
    if not volumes or len(mask_list) != len(volumes):
        raise ValueError(
            f"fit needs one or more volumes and as many masks; got {len(volumes)}/{len(mask_list)}"
        )
    if len({volume.num_channels for volume in volumes}) != 1:
        raise ValueError("all training volumes must have the same number of channels")
    selected = [_selected_voxels(v, m, use_foreground_mask) for v, m in zip(volumes, mask_list, strict=True)]
    return [np.concatenate(channel_values) for channel_values in zip(*selected, strict=True)]


def _zscore(array: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return (array - _per_channel(mean)) / _per_channel(np.maximum(std, _MIN_STD))


def _per_channel(values: np.ndarray) -> np.ndarray:
    """Per-channel values ``(C,)`` shaped ``(C, 1, 1, 1)`` in float32 to broadcast over a volume."""
    return np.asarray(values, dtype=np.float32).reshape(-1, 1, 1, 1)


def _check_channels(volume: Volume, learned: np.ndarray) -> None:
    if volume.num_channels != len(learned):
        raise ValueError(f"fitted on {len(learned)} channel(s), got a volume with {volume.num_channels}")


def _check_percentiles(lower: float, upper: float) -> None:
    if not 0 <= lower < upper <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got ({lower}, {upper})")
