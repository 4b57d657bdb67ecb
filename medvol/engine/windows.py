"""Sliding-window inference over a whole prepared scan, in numpy, for every engine.

``predict_volume(network, image, patch_size)`` gives class probabilities for
a scan larger than the network's training patch: windows of ``patch_size``
with half overlap, each window's logits weighted by a Gaussian centred on it
(so window borders count less), summed, divided by the summed weights, then
softmax. It computes what ``monai.inferers.sliding_window_inference`` with
``mode="gaussian"`` and ``sigma_scale=0.125`` computes (medvol 0.1 called it;
``tests/test_windows.py`` holds the two within 1e-5), in the same window
order, so the torch engine and ONNX Runtime share this one implementation.

A network is any callable mapping windows ``(B, C, X, Y, Z)`` float32 to
logits ``(B, K, X, Y, Z)`` float32 (numpy arrays both):
``medvol.engine.torch_network.TorchNetwork`` or
``medvol.export.runtime.OnnxNetwork``. Nothing here imports torch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
from scipy.special import softmax

Network = Callable[[np.ndarray], np.ndarray]
"""Windows ``(B, C, X, Y, Z)`` float32 → logits ``(B, K, X, Y, Z)`` float32."""

SLIDING_WINDOW_OVERLAP = 0.5
SLIDING_WINDOW_BATCH = 4
"""Windows per call of the network."""
GAUSSIAN_SIGMA_SCALE = 0.125
"""The Gaussian weight's sigma along each axis, as a fraction of the window's size."""
SMALLEST_WEIGHT = 1e-3
"""Weights are at least this (and at least the Gaussian's smallest value), so every voxel counts."""


def predict_volume(network: Network, image: np.ndarray, patch_size: tuple[int, int, int]) -> np.ndarray:
    """Class probabilities ``(B, K, X, Y, Z)`` float32 for images ``(B, C, X, Y, Z)``.

    An image smaller than the patch along an axis is first padded as training
    patches are (``pad_like_training``).
    """
    padded, window = pad_like_training(image, patch_size)
    logits = np.concatenate([sliding_window(network, one[np.newaxis], patch_size) for one in padded])
    return softmax(logits[window], axis=1).astype(np.float32, copy=False)


def sliding_window(
    network: Network,
    image: np.ndarray,
    patch_size: tuple[int, int, int],
    overlap: float = SLIDING_WINDOW_OVERLAP,
    batch_size: int = SLIDING_WINDOW_BATCH,
) -> np.ndarray:
    """Gaussian-blended logits ``(1, K, X, Y, Z)`` float32 of an image ``(1, C, X, Y, Z)`` ≥ the patch."""
    spatial = image.shape[2:]
    starts = [window_starts(n, p, overlap) for n, p in zip(spatial, patch_size, strict=True)]
    windows: list[tuple[slice, ...]] = [
        (slice(None), slice(None), *(slice(s, s + p) for s, p in zip(start, patch_size, strict=True)))
        for start in itertools.product(*starts)
    ]  # (batch, channels, X, Y, Z) indices
    weight = gaussian_weight(patch_size)
    total: np.ndarray | None = None
    weights = np.zeros((1, 1, *spatial), dtype=np.float32)
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        batch = np.ascontiguousarray(np.concatenate([image[window] for window in chunk]))
        logits = np.asarray(network(batch), dtype=np.float32)
        if total is None:
            total = np.zeros((1, logits.shape[1], *spatial), dtype=np.float32)
        for window, one in zip(chunk, logits, strict=True):
            total[window] += one * weight
            weights[window] += weight
    assert total is not None
    return total / weights


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """First voxels of the windows of ``patch`` voxels covering an axis of ``size`` ≥ ``patch`` voxels.

    Windows step by ``int(patch · (1 − overlap))`` voxels (at least 1); the
    last one is moved back to end at the border.
    """
    if size == patch:
        return [0]
    step = max(1, int(patch * (1 - overlap)))
    count = next(i for i in range(math.ceil(size / step)) if i * step + patch >= size) + 1
    return [min(i * step, size - patch) for i in range(count)]


def gaussian_weight(patch_size: tuple[int, int, int]) -> np.ndarray:
    """The weight ``(X, Y, Z)`` float32 of a window's voxels: a Gaussian of sigma ``size / 8`` per axis.

    Not normalised (1 at the centre); values below ``SMALLEST_WEIGHT`` are raised to it.
    """
    weight = np.ones((), dtype=np.float32)
    for size in patch_size:
        x = np.arange(-(size - 1) / 2, (size - 1) / 2 + 1, dtype=np.float32)
        sigma = size * GAUSSIAN_SIGMA_SCALE
        weight = weight[..., np.newaxis] * np.exp(x**2 / np.float32(-2 * sigma**2))
    return np.maximum(weight, max(float(weight.min()), SMALLEST_WEIGHT)).astype(np.float32)


def pad_like_training(
    image: np.ndarray, patch_size: tuple[int, int, int]
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """``image`` ``(B, C, X, Y, Z)`` padded to at least ``patch_size``, and the window of the original.

    Padding is centred (one voxel more after than before when odd) and filled
    with each image's minimum over channels and voxels, as in training
    (``medvol.data.dataset.random_patch``), not with zeros (the mean of a
    z-scored scan), so the model sees at its borders what it was trained on.
    """
    spatial = image.shape[2:]
    before = [max(0, (p - n + 1) // 2) for n, p in zip(spatial, patch_size, strict=True)]
    shape = [max(n, p) for n, p in zip(spatial, patch_size, strict=True)]
    window = (slice(None), slice(None), *(slice(b, b + n) for b, n in zip(before, spatial, strict=True)))
    if shape == list(spatial):
        return image, window
    fill = image.min(axis=(1, 2, 3, 4), keepdims=True)
    padded = np.broadcast_to(fill, (*image.shape[:2], *shape)).copy()
    padded[window] = image
    return padded, window


def flip_averaged(
    network: Network, image: np.ndarray, patch_size: tuple[int, int, int], flip_axes: tuple[int, ...] = ()
) -> np.ndarray:
    """``predict_volume``, averaged over every combination of flips of ``flip_axes``.

    ``flip_axes`` are voxel axes (0 = X, 1 = Y, 2 = Z) of ``image`` ``(1, C, X, Y, Z)``;
    ``k`` axes cost ``2**k`` predictions, and none is one plain prediction.
    """
    axes = [axis + 2 for axis in sorted(set(flip_axes))]
    flips = [combination for n in range(len(axes) + 1) for combination in itertools.combinations(axes, n)]
    total = np.zeros((), dtype=np.float32)
    for flipped_axes in flips:
        flipped = np.flip(image, flipped_axes) if flipped_axes else image
        out = predict_volume(network, flipped, patch_size)
        total = total + (np.flip(out, flipped_axes) if flipped_axes else out)
    return total / len(flips)
