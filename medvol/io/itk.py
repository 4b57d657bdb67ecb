"""NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``) through SimpleITK.

As for NIfTI, the header is checked against the bytes on disk before any
voxel is read, so a tiny file declaring a huge image is refused, not allocated.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medvol.errors import UnreadableFileError
from medvol.io.atomic import atomic_path
from medvol.io.geometry import affine_from_itk, set_itk_geometry
from medvol.io.nifti import DEFLATE_MAX_RATIO
from medvol.volume import Volume


def load_itk(path: Path) -> Volume:
    """Read an image SimpleITK understands; vector pixels become channels."""
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        check_declared_size(path, reader)
        image = reader.Execute()
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


_DATA_FILE = re.compile(
    r"^\s*(?:ElementDataFile\s*=|data ?file\s*:)\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE
)
_NRRD_ENCODING = re.compile(r"^\s*encoding\s*:\s*(\w+)", re.IGNORECASE | re.MULTILINE)
_META_COMPRESSED = re.compile(r"^\s*CompressedData\s*=\s*True", re.IGNORECASE | re.MULTILINE)


def check_declared_size(path: Path, reader: sitk.ImageFileReader) -> None:
    """Refuse a file whose bytes cannot hold the image its header declares (read by ``reader``).

    Raw data must be at least as long as the voxels; gzip/zlib data expands
    at most 1032-fold; text (ASCII, hex) takes at least one byte per value.
    Other encodings, and headers naming several data files, are not checked.

    Raises:
        UnreadableFileError: the data is too small, with the declared and actual sizes.
    """
    size = [int(n) for n in reader.GetSize()]
    components = int(reader.GetNumberOfComponents())
    pixel = sitk.Image([1] * len(size), reader.GetPixelID(), components)
    values = math.prod(size) * components
    declared = values * pixel.GetSizeOfPixelComponent()
    needed = declared
    with open(path, "rb") as handle:
        header = handle.read(1 << 16).decode("latin-1")
    data = path
    named = _DATA_FILE.search(header)
    if named and named[1].upper() != "LOCAL":
        data = path.parent / named[1]
        if not data.is_file():
            return  # a list or pattern of files: SimpleITK says what is wrong
    available = data.stat().st_size
    encoding = _NRRD_ENCODING.search(header)
    kind = encoding[1].lower() if encoding else "raw"
    if _META_COMPRESSED.search(header) or kind in ("gzip", "gz"):
        available *= DEFLATE_MAX_RATIO
        how = f"{data.stat().st_size:,} bytes of compressed data expand to at most {available:,} bytes"
    elif kind in ("ascii", "text", "txt", "hex"):
        needed = values
        how = f"{available:,} bytes of text hold at most {available:,} values"
    elif kind == "raw":
        how = f"{data.name} holds {available:,} bytes"
    else:
        return
    if available < needed:
        raise UnreadableFileError(
            path,
            f"its header declares {'×'.join(map(str, size))} voxels of {pixel.GetPixelIDTypeAsString()} "
            f"({declared:,} bytes), but {how}: truncated, or a corrupt header",
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
