"""Compare two gridded images voxel by voxel through world coordinates."""

from __future__ import annotations

import numpy as np


def index_map(affine_ours: np.ndarray, affine_reference: np.ndarray, tolerance_mm: float) -> np.ndarray:
    """The integer 4×4 map from reference voxel indices to ours.

    Asserts the two grids share every voxel centre to ``tolerance_mm``, so the
    map is a permutation/flip of axes plus an integer shift.
    """
    mapping = np.linalg.inv(affine_ours) @ affine_reference
    rounded = np.round(mapping)
    spacing = np.linalg.norm(affine_ours[:3, :3], axis=0)
    assert np.all(np.abs(mapping - rounded)[:3] * spacing[:, None] < tolerance_mm), mapping
    return rounded.astype(int)


def resample_by_index(ours: np.ndarray, mapping: np.ndarray, reference_shape: tuple[int, ...]) -> np.ndarray:
    """Our ``(X, Y, Z)`` array read at the reference grid's voxels (via ``index_map``)."""
    grid = np.indices(reference_shape).reshape(3, -1)
    ours_index = mapping[:3, :3] @ grid + mapping[:3, 3:4]
    assert ours_index.min() >= 0
    assert np.all(ours_index.max(axis=1) < np.array(ours.shape))
    return ours[tuple(ours_index)].reshape(reference_shape)
