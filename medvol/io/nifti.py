"""NIfTI-1/2 (``.nii``, ``.nii.gz``) through nibabel."""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from medvol.errors import GeometryError, UnreadableFileError
from medvol.io.atomic import atomic_path
from medvol.io.geometry import is_sheared
from medvol.version import __version__
from medvol.volume import Volume


def load_nifti(path: Path) -> Volume:
    """Read a NIfTI file; the affine is nibabel's choice of sform/qform.

    3D images get one channel; 4D images ``(X, Y, Z, T)`` become ``(T, X, Y, Z)``;
    5D vector images ``(X, Y, Z, 1, C)`` become ``(C, X, Y, Z)``. Stored
    scaling (``scl_slope``/``scl_inter``) is applied, so a scaled image is float.
    """
    try:
        image = nib.load(path)
        array = np.asanyarray(image.dataobj)  # type: ignore[attr-defined]
    except (nib.filebasedimages.ImageFileError, EOFError, OSError, zlib.error, ValueError) as error:
        raise UnreadableFileError(path, f"not a readable NIfTI file ({_reason(error)})") from error
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise UnreadableFileError(path, f"expected NIfTI, found {type(image).__name__}")
    array = _channels_first(array, path)
    header = image.header
    sform_code = int(header["sform_code"])
    qform_code = int(header["qform_code"])
    if sform_code == 0 and qform_code == 0:
        geometry_note = "no sform or qform: nibabel's fallback affine (pixdim only)"
    else:
        geometry_note = "sform" if sform_code > 0 else "qform"
    return Volume(
        array=array,
        affine=image.affine,
        meta={
            "source_path": str(path),
            "format": "nifti",
            "reader": f"nibabel {nib.__version__}",
            "modality": None,
            "series_uid": None,
            "source_affine": image.affine.tolist(),
            "source_shape": list(array.shape[1:]),
            "affine_from": geometry_note,
            "sform_code": sform_code,
            "qform_code": qform_code,
        },
    )


def _channels_first(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if array.ndim == 3:
        return array[np.newaxis]
    if array.ndim == 4:
        return np.moveaxis(array, 3, 0)
    if array.ndim == 5 and array.shape[3] == 1:
        return np.moveaxis(array[:, :, :, 0, :], 3, 0)
    raise UnreadableFileError(
        path, f"cannot map a {array.ndim}-D NIfTI of shape {array.shape} to (C, X, Y, Z)"
    )


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def save_nifti(volume: Volume, path: Path) -> None:
    """Write a Volume as NIfTI-1 with its affine in both sform and qform.

    The sform keeps the affine to float32 precision, so a NIfTI loaded by
    medvol and saved again reloads with an identical affine. A sheared affine
    (gantry tilt) is kept in the sform only (qform code 0), since a qform cannot
    express shear. ``(C, X, Y, Z)`` with ``C > 1`` is written as 4D ``(X, Y, Z, C)``.
    """
    array = volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    data = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, 3)
    image = nib.Nifti1Image(data, volume.affine)
    header = image.header
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = f"medvol {__version__}".encode()
    image.set_sform(volume.affine, code=1)
    if is_sheared(volume.affine):
        image.set_qform(None, code=0)
    else:
        image.set_qform(volume.affine, code=1)
    if not np.allclose(image.get_sform(), volume.affine, atol=1e-4):
        raise GeometryError(path, "the affine cannot be stored in a NIfTI sform")
    with atomic_path(path) as temporary:
        nib.save(image, temporary)
