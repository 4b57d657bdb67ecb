"""NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``) through SimpleITK."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medvol.errors import UnreadableFileError
from medvol.io.atomic import atomic_path
from medvol.io.geometry import affine_from_itk, set_itk_geometry
from medvol.volume import Volume


def load_itk(path: Path) -> Volume:
    """Read an image SimpleITK understands; vector pixels become channels."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise UnreadableFileError(path, f"SimpleITK cannot read it ({_first_line(error)})") from error
    if image.GetDimension() != 3:
        raise UnreadableFileError(
            path, f"expected a 3D image, found {image.GetDimension()}D of size {image.GetSize()}"
        )
    array = sitk.GetArrayFromImage(image)  # (Z, Y, X) or (Z, Y, X, C)
    if image.GetNumberOfComponentsPerPixel() == 1:
        array = array.transpose(2, 1, 0)[np.newaxis]
    else:
        array = array.transpose(3, 2, 1, 0)
    affine = affine_from_itk(image)
    return Volume(
        array=array,  # a transposed view of SimpleITK's buffer: no copy
        affine=affine,
        meta={
            "source_path": str(path),
            "format": path.suffix.lower().lstrip("."),
            "reader": f"SimpleITK {sitk.Version.VersionString()}",
            "modality": None,
            "series_uid": None,
            "source_affine": affine.tolist(),
            "source_shape": list(array.shape[1:]),
        },
    )


def save_itk(volume: Volume, path: Path) -> None:
    """Write NRRD/MetaImage (compressed); more than one channel becomes a vector image."""
    array = volume.array.astype(np.uint8) if volume.array.dtype == np.bool_ else volume.array
    if array.shape[0] == 1:
        image = sitk.GetImageFromArray(array[0].transpose(2, 1, 0))
    else:
        image = sitk.GetImageFromArray(array.transpose(3, 2, 1, 0), isVector=True)
    set_itk_geometry(image, volume.affine, path)
    with atomic_path(path) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK messages put the useful sentence last, after file/line noise.
    return lines[-1] if lines else type(error).__name__
