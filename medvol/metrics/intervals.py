"""Confidence intervals: case-level percentile bootstrap and Student t over runs."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate with its confidence interval; unpacks as ``estimate, low, high = ci``.

    Attributes:
        estimate: the statistic on all the data (bootstrap) or the mean (Student t).
        low: lower bound (NaN when it cannot be computed).
        high: upper bound.
        confidence: the nominal coverage, e.g. 0.95.
        method: ``"percentile bootstrap"`` or ``"student t"``.
        n: number of cases (bootstrap) or values (Student t).
        n_resamples: bootstrap resamples drawn (0 for Student t).
        n_undefined: resamples skipped because the statistic was not finite on them.
        clipped: a bound was moved to the edge of the metric's range (Student t with ``bounds``).
    """

    estimate: float
    low: float
    high: float
    confidence: float
    method: str
    n: int
    n_resamples: int = 0
    n_undefined: int = 0
    clipped: bool = False

    def __iter__(self) -> Iterator[float]:
        return iter((self.estimate, self.low, self.high))

    def to_dict(self) -> dict[str, float | int | str]:
        """All fields, for result files."""
        return asdict(self)


MIN_CASES_FOR_CI = 3
"""Fewer cases give no bootstrap interval: resampling one or two cases only repeats them."""


def bootstrap_ci(
    data: np.ndarray | Sequence[float] | tuple[np.ndarray, ...],
    statistic: Callable[..., float],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    """Case-level percentile-bootstrap confidence interval of a statistic.

    Cases (rows along axis 0) are drawn with replacement ``n_resamples`` times; with several arrays
    the same rows are drawn from each (paired: a case's target stays with its probability). The
    interval is the ``(1 ± confidence) / 2`` quantiles of the statistic over the resamples.

    A resample on which the statistic is not finite (e.g. AUC of a resample holding one class; the
    medvol metrics return NaN there) is skipped and counted in ``n_undefined``, and a
    ``RuntimeWarning`` says how many; the interval is then conditional on the statistic being
    defined. A statistic that raises is not caught. ``scipy.stats.bootstrap`` (BCa, ``paired=True``)
    is not used because one undefined resample turns its whole interval into NaN.

    Args:
        data: per-case values ``(N,)`` (or ``(N, ...)``), or a tuple of arrays with ``N`` rows
            each, resampled together, e.g. ``(targets (N,), probabilities (N, K))``.
        statistic: called as ``statistic(values)`` or ``statistic(*arrays)``; returns a float,
            NaN where undefined. Use ``np.nanmean`` rather than ``np.mean`` to leave NaN cases out.
        n_resamples: number of bootstrap resamples.
        confidence: nominal coverage in (0, 1).
        seed: seed of the resampling (same seed and data, same interval).

    Returns:
        The statistic on all cases with its interval; the estimate is not re-centred. When the
        estimate itself is undefined, the estimate and bounds are NaN, no resample is drawn and
        ``n_undefined`` equals ``n_resamples``. With fewer than ``MIN_CASES_FOR_CI`` cases the
        bounds are NaN and no resample is drawn (``n_resamples`` 0): an interval from one or two
        cases would look precise and mean nothing.
    """
    single = not isinstance(data, tuple)
    arrays = [np.asarray(data)] if single else [np.asarray(a) for a in data]
    rows = [a.shape[0] if a.ndim else 0 for a in arrays]
    if not rows or min(rows) == 0 or len(set(rows)) > 1:
        raise ValueError(f"bootstrap_ci needs >= 1 case and equal numbers of rows in every array, got {rows}")
    count = rows[0]
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")

    def evaluate(picks: np.ndarray | slice) -> float:
        picked = [a[picks] for a in arrays]
        return float(statistic(picked[0]) if single else statistic(*picked))

    estimate = evaluate(slice(None))
    if count < MIN_CASES_FOR_CI:
        return ConfidenceInterval(estimate, math.nan, math.nan, confidence, "percentile bootstrap", count)
    if not math.isfinite(estimate):
        return ConfidenceInterval(
            math.nan, math.nan, math.nan, confidence, "percentile bootstrap", count, n_resamples, n_resamples
        )
    rng = np.random.default_rng(seed)
    values = np.array([evaluate(rng.integers(0, count, size=count)) for _ in range(n_resamples)])
    defined = values[np.isfinite(values)]
    undefined = int(values.size - defined.size)
    if undefined:
        warnings.warn(
            f"bootstrap_ci: the statistic was undefined on {undefined} of {n_resamples} resamples "
            f"({undefined / n_resamples:.1%}); they were skipped",
            RuntimeWarning,
            stacklevel=2,
        )
    if defined.size:
        low, high = np.quantile(defined, [(1.0 - confidence) / 2, (1.0 + confidence) / 2])
    else:
        low = high = math.nan
    return ConfidenceInterval(
        estimate, float(low), float(high), confidence, "percentile bootstrap", count, n_resamples, undefined
    )


def mean_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    bounds: tuple[float, float] | None = None,
) -> ConfidenceInterval:
    """Mean of a few values (seeds, folds) with a Student-t confidence interval.

    ``mean ± t_{(1 + confidence) / 2, n − 1} × s / √n`` with ``s`` the sample standard deviation
    (``ddof=1``). It assumes roughly normal values; with 3–10 seeds it is wide, honestly so.
    One value gives ``(value, NaN, NaN)``.

    With ``bounds`` (the metric's range, e.g. ``(0, 1)`` for an accuracy) a bound outside the
    range is moved to its edge and ``clipped`` is set: the t-interval of three accuracies 0.87,
    0.64, 0.87 reaches 1.12, which no accuracy can; the clipped interval says so by its flag,
    and is no longer a 95% t-interval in the strict sense.

    Raises:
        ValueError: no values, a non-finite value (a failed seed must not vanish from the mean),
            a confidence outside (0, 1), or bounds with low above high.
    """
    array = np.asarray(values, dtype=float).ravel()
    if array.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"mean_ci got non-finite values: {array.tolist()}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if bounds is not None and bounds[0] > bounds[1]:
        raise ValueError(f"bounds must be (low, high) with low <= high, got {bounds}")
    mean = float(array.mean())
    if array.size == 1:
        return ConfidenceInterval(mean, math.nan, math.nan, confidence, "student t", 1)
    half_width = float(stats.t.ppf((1.0 + confidence) / 2, df=array.size - 1) * stats.sem(array))
    low, high = mean - half_width, mean + half_width
    clipped = False
    if bounds is not None:
        clipped = low < bounds[0] or high > bounds[1]
        low, high = max(low, float(bounds[0])), min(high, float(bounds[1]))
    return ConfidenceInterval(mean, low, high, confidence, "student t", array.size, clipped=clipped)
