"""NIfTI-1/2 (``.nii``, ``.nii.gz``) through nibabel.

A header is checked against the file before any voxel is read: a file too
small to hold the voxels its header declares is refused with both sizes, so
a corrupt or hostile 600-byte file never makes medvol allocate gigabytes.
"""

from __future__ import annotations

import logging
import math
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np

from medvol.errors import GeometryError, UnreadableFileError
from medvol.io.atomic import atomic_path, full_suffix
from medvol.io.geometry import is_sheared
from medvol.logs import get_logger
from medvol.version import __version__
from medvol.volume import Volume

logger = get_logger(__name__)

DEFLATE_MAX_RATIO = 1032
"""Deflate (gzip) cannot expand a stream more than 1032-fold (RFC 1951: 258 bytes per 2-bit code)."""
GZIP_TRAILER_SIZE_MODULUS = 1 << 32
"""A gzip trailer's ISIZE is the uncompressed size modulo 2³² (RFC 1952)."""


def load_nifti(path: Path) -> Volume:
    """Read a NIfTI file; the affine is nibabel's choice of sform/qform.

    3D images get one channel; 4D images ``(X, Y, Z, T)`` become ``(T, X, Y, Z)``;
    5D vector images ``(X, Y, Z, 1, C)`` become ``(C, X, Y, Z)``. Stored
    scaling (``scl_slope``/``scl_inter``) is applied, so a scaled image is float.
    """
    unreadable = (
        nib.filebasedimages.ImageFileError,
        nib.spatialimages.HeaderDataError,
        EOFError,
        OSError,
        zlib.error,
        ValueError,
    )
    try:
        with _nibabel_reports() as reports:
            image = nib.load(path)
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            raise UnreadableFileError(path, f"expected NIfTI, found {type(image).__name__}")
        proxy = cast(nib.arrayproxy.ArrayProxy, image.dataobj)  # the file's shape, dtype, offset
        check_declared_size(path, proxy.shape, proxy.dtype, proxy.offset)
        array = np.asanyarray(proxy)
    except unreadable as error:
        raise UnreadableFileError(path, f"not a readable NIfTI file ({_reason(error)})") from error
    _warn_fixes(path, image, reports)
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


def check_declared_size(path: Path, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> None:
    """Refuse a file that cannot hold the voxels its header declares, before reading them.

    ``shape``, ``dtype`` and ``offset`` (bytes before the first voxel) are the
    header's. A ``.nii`` must be at least ``vox_offset + voxels × bytes per voxel`` long.
    For a ``.nii.gz``, deflate's largest expansion bounds what the compressed
    bytes can hold; the gzip trailer (uncompressed size modulo 2³²) confirms
    the usual single-stream file, and anything else is decompressed and
    counted, without keeping the bytes.

    Raises:
        UnreadableFileError: the file is too small, with the declared and actual sizes.
    """
    needed = int(offset) + math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize
    size = path.stat().st_size
    declared = (
        f"its header declares {'×'.join(map(str, shape))} voxels of {np.dtype(dtype)} "
        f"({_bytes(needed)} with the {offset}-byte header)"
    )
    if full_suffix(path) != ".nii.gz":
        if size < needed:
            raise UnreadableFileError(
                path, f"{declared}, but the file holds {_bytes(size)}: truncated, or a corrupt header"
            )
        return
    if needed > size * DEFLATE_MAX_RATIO:
        raise UnreadableFileError(
            path,
            f"{declared}, but {_bytes(size)} of gzip data expand to at most "
            f"{_bytes(size * DEFLATE_MAX_RATIO)}: truncated, or a corrupt header",
        )
    with open(path, "rb") as handle:
        handle.seek(-4, 2)
        trailer = int.from_bytes(handle.read(4), "little")
    if trailer == needed % GZIP_TRAILER_SIZE_MODULUS or needed <= trailer:
        return
    found = _uncompressed_size(path, limit=needed)
    if found < needed:
        raise UnreadableFileError(
            path, f"{declared}, but it decompresses to {_bytes(found)}: truncated, or a corrupt header"
        )


def _uncompressed_size(path: Path, limit: int) -> int:
    """Bytes a gzip file decompresses to (every member), counting up to ``limit`` only."""
    total = 0
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    with open(path, "rb") as handle:
        while total < limit:
            chunk = decompressor.unconsumed_tail or handle.read(1 << 20)
            if not chunk:
                break
            total += len(decompressor.decompress(chunk, 1 << 24))
            if decompressor.eof:  # another gzip member may follow
                rest = decompressor.unused_data
                decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                if rest:
                    total += len(decompressor.decompress(rest, 1 << 24))
    return total


def _bytes(count: int) -> str:
    if count < 10_000:
        return f"{count} bytes"
    return f"{count:,} bytes ({count / 2**30:.3g} GiB)" if count >= 2**30 else f"{count:,} bytes"


_capture = threading.local()


class _NibabelReports(logging.Filter):
    """Holds back nibabel's header-fix reports made while *this thread* loads a file for medvol.

    nibabel logs the fixes it applies (a zero voxel size set to 1, ...) to its
    own logger, which both prints them and passes them on; medvol says instead,
    once, which file was fixed and how (``_warn_fixes``).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        reports = getattr(_capture, "reports", None)
        if reports is None:
            return True
        reports.append(record.getMessage())
        return False


_REPORTS_FILTER = _NibabelReports()
nib.imageglobals.logger.addFilter(_REPORTS_FILTER)


@contextmanager
def _nibabel_reports() -> Iterator[list[str]]:
    reports: list[str] = []
    _capture.reports = reports
    try:
        yield reports
    finally:
        _capture.reports = None


def _warn_fixes(path: Path, image: nib.Nifti1Image | nib.Nifti2Image, reports: list[str]) -> None:
    """One medvol warning per header fix nibabel made while loading ``path``."""
    for report in reports:
        if "pixdim" in report:
            with nib.openers.ImageOpener(str(path)) as handle:
                stored = type(image.header).from_fileobj(handle, check=False)["pixdim"][1:4]
            used = image.header["pixdim"][1:4]
            affine_note = (
                "the affine comes from the sform, which this does not change"
                if int(image.header["sform_code"]) > 0
                else "the affine uses the corrected voxel size"
            )
            logger.warning(
                "%s: the header's voxel size (pixdim) %s mm has zero or negative values; read as %s mm "
                "(0 becomes 1, a negative value its absolute value); %s",
                path,
                [float(v) for v in stored],
                [float(v) for v in used],
                affine_note,
            )
        else:
            logger.warning("%s: nibabel corrected the header: %s", path, report)


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
