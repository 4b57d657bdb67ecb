"""The one image type that flows through medvol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np

from medvol.errors import GeometryError


@dataclass(eq=False)
class Volume:
    """A 3D image (with channels) placed in the world.

    Attributes:
        array: voxel values, shape ``(C, X, Y, Z)``; channels first (``C == 1``
            for a plain scan, time points or echoes otherwise).
        affine: 4×4 matrix mapping a voxel index ``(x, y, z, 1)`` to world
            coordinates in millimetres, RAS+: +x toward the patient's right,
            +y anterior, +z superior (the NIfTI/nibabel convention; DICOM and
            ITK use LPS+, converted in ``medvol.io.geometry`` only).
        meta: provenance, JSON-serialisable: ``source_path``, ``format``,
            ``reader``, ``modality``, ``series_uid``, ``source_affine``,
            ``source_shape`` and notes on anything handled on purpose. Never
            holds patient identifiers.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 4:
            raise GeometryError(
                self.meta.get("source_path"),
                f"a Volume array must have shape (C, X, Y, Z), got {self.array.shape}",
            )
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise GeometryError(self.meta.get("source_path"), f"invalid affine {affine.tolist()}")
        if not np.allclose(affine[3], [0, 0, 0, 1]) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise GeometryError(
                self.meta.get("source_path"),
                f"affine is not an invertible 3D affine: {affine.tolist()}",
            )
        self.affine = affine

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(X, Y, Z)`` in voxels."""
        x, y, z = self.array.shape[1:]
        return (x, y, z)

    @property
    def num_channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along x, y, z in mm (length of each affine column)."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def orientation(self) -> str:
        """Axis codes such as ``"RAS"`` or ``"LPS"``: where each index axis points."""
        return "".join(nib.orientations.aff2axcodes(self.affine))

    def world_coordinates(self, index: np.ndarray) -> np.ndarray:
        """Map voxel indices ``(N, 3)`` to world positions ``(N, 3)`` in mm (RAS+)."""
        index = np.asarray(index, dtype=np.float64)
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]


GRID_TOLERANCE_MM = 1e-3
"""Two grids are the same when every voxel centre lies within this distance (mm) of its twin."""


def grid_difference(reference: Volume, other: Volume) -> str | None:
    """How ``other``'s grid differs from ``reference``'s (an image's), or ``None`` when they agree.

    Grids agree when the shapes are equal and every voxel centre of one lies
    within ``GRID_TOLERANCE_MM`` of the same voxel of the other (checked at the
    8 corners of the box, which bound the distance over all voxels since both
    maps are affine). Every check of an image's channels and label map against
    each other uses this one test: indexing, preprocessing, evaluation, synthesis.
    """
    if reference.shape != other.shape:
        return f"shape {list(other.shape)} differs from the image's {list(reference.shape)}"
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * (
        np.array(reference.shape) - 1
    )
    distance = float(np.abs(reference.world_coordinates(corners) - other.world_coordinates(corners)).max())
    if distance > GRID_TOLERANCE_MM:
        return f"affine differs from the image's by up to {distance:.4f} mm"
    return None
