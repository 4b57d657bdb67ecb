"""Model inputs from scans: the one preparation that training, validation and inference share.

``prepare_image`` (preprocess, then normalise), ``classifier_crop`` (a
classifier's fixed input shape), ``medmnist_input`` (MedMNIST's ``uint8 / 255``)
and ``resize`` (a scan to a MedMNIST classifier's training shape) are numpy and
SimpleITK only, so a model package predicts without torch (``medvol[infer]``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medvol.transforms.normalize import Normalizer
from medvol.transforms.preprocess import PreprocessConfig, PreprocessRecord, crop_or_pad, preprocess
from medvol.volume import Volume

ANTI_ALIASING_TRUNCATE = 4.0
"""Gaussian kernel tail in sigmas (MONAI's ``GaussianSmooth``, which ``Resize`` used in medvol 0.1)."""


def prepare_image(
    image: Volume, label: Volume | None, preprocess_config: PreprocessConfig, normalizer: Normalizer
) -> tuple[Volume, Volume | None, PreprocessRecord]:
    """A case as the model sees it: preprocessed, then normalised; image ``(C, X, Y, Z)`` float32.

    The one preparation of scans shared by the datasets (training, validation)
    and by inference (``medvol.tasks``).
    """
    image, label, record = preprocess(image, label, preprocess_config)
    image = normalizer.transform(image)
    prepared = Volume(image.array.astype(np.float32, copy=False), image.affine, image.meta)
    return prepared, label, record


def classifier_crop(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A prepared image ``(C, X, Y, Z)`` centre-cropped/padded (with its minimum) to ``shape``."""
    return crop_or_pad(Volume(image, np.eye(4), {}), shape).array.astype(np.float32, copy=False)


def medmnist_input(array: np.ndarray) -> np.ndarray:
    """A MedMNIST volume ``(X, Y, Z)`` or ``(1, X, Y, Z)`` of 0–255 values as the model input
    ``(1, X, Y, Z)`` float32: ``value / 255``."""
    volume = array if array.ndim == 4 else array[np.newaxis]
    return volume.astype(np.float32) / 255.0


def resize(array: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``(C, X, Y, Z)`` resized to ``shape`` voxels (trilinear, anti-aliased), kept within [0, 1]; float32.

    Along an axis that shrinks by a factor ``f``, a Gaussian of sigma
    ``(f - 1) / 2`` voxels (skimage's choice; the kernel integrates the Gaussian
    over each voxel, zeros beyond the border) smooths first. Interpolation
    samples voxel centres: output voxel ``i`` reads input position
    ``(i + 0.5) · n / m − 0.5``, clamped to the array (``align_corners=False``).
    """
    image = array.astype(np.float32)
    if tuple(image.shape[1:]) == tuple(shape):
        return np.clip(image, 0.0, 1.0)
    for axis, (size, target) in enumerate(zip(image.shape[1:], shape, strict=True), start=1):
        if target < size:
            kernel = _integrated_gaussian((size / target - 1) / 2)
            image = ndimage.correlate1d(image, kernel, axis=axis, mode="constant", cval=0.0)
    for axis, (size, target) in enumerate(zip(image.shape[1:], shape, strict=True), start=1):
        image = _linear_along(image, axis, size, target)
    return np.clip(image, 0.0, 1.0)


def _integrated_gaussian(sigma: float) -> np.ndarray:
    """A Gaussian of ``sigma`` voxels integrated over each voxel, ``±4σ`` (at least ``±1``); unnormalised."""
    from scipy.special import erf

    tail = int(max(sigma * ANTI_ALIASING_TRUNCATE, 0.5) + 0.5)
    x = np.arange(-tail, tail + 1, dtype=np.float32)
    if sigma == 0:
        return (x == 0).astype(np.float32)
    t = np.float32(0.70710678 / sigma)
    return np.clip(0.5 * (erf(t * (x + 0.5)) - erf(t * (x - 0.5))), 0, None).astype(np.float32)


def _linear_along(image: np.ndarray, axis: int, size: int, target: int) -> np.ndarray:
    """``image`` linearly resampled from ``size`` to ``target`` voxel centres along ``axis``."""
    if size == target:
        return image
    position = np.maximum((np.arange(target, dtype=np.float32) + 0.5) * np.float32(size / target) - 0.5, 0)
    low = np.minimum(np.floor(position).astype(np.int64), size - 1)
    high = np.minimum(low + 1, size - 1)
    shape = [1] * image.ndim
    shape[axis] = target
    weight = (position - low).astype(np.float32).reshape(shape)
    return np.take(image, low, axis=axis) * (1 - weight) + np.take(image, high, axis=axis) * weight
