"""World-coordinate conventions: the only place where LPS and RAS meet.

medvol's ``Volume.affine`` is RAS+ (NIfTI). DICOM and ITK (SimpleITK, NRRD,
MetaImage) describe the world in LPS+. The two differ by a sign flip of the
first two world axes, which is all this module does, plus splitting an affine
into ITK's (origin, spacing, direction) and back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medvol.errors import GeometryError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras(affine_lps: np.ndarray) -> np.ndarray:
    """Convert a voxel→LPS mm affine into a voxel→RAS mm affine (4×4)."""
    return LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64)


def ras_to_lps(affine_ras: np.ndarray) -> np.ndarray:
    """Convert a voxel→RAS mm affine into a voxel→LPS mm affine (4×4)."""
    return LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)


def affine_from_columns(
    origin_lps: np.ndarray, axis_steps_lps: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> np.ndarray:
    """Build a voxel→RAS affine from LPS geometry.

    Args:
        origin_lps: world position (mm, LPS) of voxel ``(0, 0, 0)``.
        axis_steps_lps: the world displacement (mm, LPS) of one step along
            index x, y and z.
    """
    affine = np.eye(4)
    for column, step in enumerate(axis_steps_lps):
        affine[:3, column] = step
    affine[:3, 3] = origin_lps
    return lps_to_ras(affine)


def affine_from_itk(image: sitk.Image) -> np.ndarray:
    """The voxel→RAS affine of a 3D SimpleITK image (index order x, y, z)."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = image.GetOrigin()
    return lps_to_ras(affine)


def set_itk_geometry(image: sitk.Image, affine_ras: np.ndarray, path: Path) -> None:
    """Give a 3D SimpleITK image the geometry of a voxel→RAS affine.

    Raises:
        GeometryError: ITK stores only rotations times spacing; a sheared
            affine (gantry tilt) cannot be written to NRRD/MetaImage exactly.
    """
    affine_lps = ras_to_lps(affine_ras)
    matrix = affine_lps[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    direction = matrix / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-6):
        raise GeometryError(
            path,
            "the affine is sheared (e.g. gantry tilt) and ITK formats cannot store it; save as NIfTI instead",
        )
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.flatten().tolist())
    image.SetOrigin(affine_lps[:3, 3].tolist())


def is_sheared(affine: np.ndarray, tolerance: float = 1e-6) -> bool:
    """True when the affine's axes are not mutually perpendicular."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    unit = matrix / np.linalg.norm(matrix, axis=0)
    return not np.allclose(unit.T @ unit, np.eye(3), atol=tolerance)
