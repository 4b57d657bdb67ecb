"""Models-Genesis-style distortions for self-supervised pretraining (``medvol pretrain``).

Zhou et al., "Models Genesis", Medical Image Analysis 67:101840 (2021): a
network learns to restore a scan from a distorted copy, which teaches it the
anatomy without labels. ``distort(image, rng)`` applies, each with its own
probability, in this order:

1. local voxel shuffling: the voxels inside many small random boxes are
   permuted (texture destroyed, shape kept);
2. a non-linear intensity transform: a random monotone-ish Bézier curve
   applied to the intensities rescaled to [0, 1] (then scaled back);
3. in-painting (random boxes replaced by uniform noise) or out-painting
   (everything outside a few random boxes replaced by noise).

The restoration target is the undistorted image. Sizes are fractions of the
volume's edge, so the same settings fit 28³ MedMNIST volumes and 64³ patches.
"""

from __future__ import annotations

import numpy as np

__all__ = ["distort"]

SHUFFLE_PROB = 0.5
NONLINEAR_PROB = 0.9
PAINT_PROB = 0.9
INPAINT_SHARE = 0.2  # of the painted images, how many are in-painted (the rest out-painted)
SHUFFLE_VOXELS_PER_BOX = 500  # one shuffled box per this many voxels
SHUFFLE_EDGE = 1 / 8  # largest shuffled box edge, fraction of the volume's edge
INPAINT_EDGE = (1 / 6, 1 / 3)  # in-painted box edges, fractions
OUTPAINT_EDGE = (3 / 7, 4 / 7)  # kept box edges in out-painting, fractions
CURVE_POINTS = 1001


def distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A distorted copy of ``image`` ``(C, X, Y, Z)`` float32 (same shape and intensity range)."""
    out = np.array(image, dtype=np.float32, copy=True)
    low, high = float(out.min()), float(out.max())
    if rng.random() < SHUFFLE_PROB:
        out = shuffle_boxes(out, rng)
    if rng.random() < NONLINEAR_PROB and high > low:
        out = bezier_intensity(out, low, high, rng)
    if rng.random() < PAINT_PROB:
        paint = inpaint if rng.random() < INPAINT_SHARE else outpaint
        out = paint(out, low, high, rng)
    return out


def _box(shape: tuple[int, ...], edge: tuple[float, float], rng: np.random.Generator) -> tuple[slice, ...]:
    """A random box inside ``shape`` ``(X, Y, Z)`` with edges in ``edge`` × the volume's edge."""
    sizes = [max(1, int(rng.uniform(*edge) * n)) for n in shape]
    starts = [int(rng.integers(0, n - s + 1)) for n, s in zip(shape, sizes, strict=True)]
    return tuple(slice(a, a + s) for a, s in zip(starts, sizes, strict=True))


def shuffle_boxes(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Permute the voxels inside small random boxes (one permutation for all channels)."""
    shape = image.shape[1:]
    out = image.copy()
    for _ in range(max(1, int(np.prod(shape)) // SHUFFLE_VOXELS_PER_BOX)):
        box = (slice(None), *_box(shape, (1 / max(shape), SHUFFLE_EDGE), rng))
        block = out[box]
        flat = block.reshape(len(block), -1)
        out[box] = flat[:, rng.permutation(flat.shape[1])].reshape(block.shape)
    return out


def bezier_intensity(image: np.ndarray, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """Map intensities through a cubic Bézier curve from (0, 0) to (1, 1) with two random control
    points (on [0, 1]-rescaled intensities), reversed half of the time."""
    t = np.linspace(0.0, 1.0, CURVE_POINTS)
    points = np.array([[0.0, 0.0], rng.random(2), rng.random(2), [1.0, 1.0]])
    weights = np.stack([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3], axis=1)
    x, y = (weights @ points).T
    order = np.argsort(x)
    x, y = x[order], y[order]
    if rng.random() < 0.5:
        y = y[::-1]
    scaled = (image - low) / (high - low)
    return (np.interp(scaled, x, y) * (high - low) + low).astype(np.float32)


def inpaint(image: np.ndarray, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """Replace up to 5 random boxes by uniform noise in ``[low, high]``."""
    out = image.copy()
    for _ in range(int(rng.integers(1, 6))):
        box = (slice(None), *_box(image.shape[1:], INPAINT_EDGE, rng))
        out[box] = rng.uniform(low, high, out[box].shape)
    return out


def outpaint(image: np.ndarray, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """Replace everything by uniform noise in ``[low, high]`` except 1 to 4 random boxes."""
    out = rng.uniform(low, high, image.shape).astype(np.float32)
    for _ in range(int(rng.integers(1, 5))):
        box = (slice(None), *_box(image.shape[1:], OUTPAINT_EDGE, rng))
        out[box] = image[box]
    return out
