"""The Volume type and NIfTI/NRRD/MetaImage reading and writing on synthetic images."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import medvol
from medvol.errors import GeometryError, UnreadableFileError

OBLIQUE = np.array(
    [
        [0.9, -0.3, 0.1, -20.5],
        [0.31, 0.88, -0.2, 14.25],
        [-0.05, 0.22, 2.4, 101.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def ramp(shape: tuple[int, ...], dtype: type = np.int16) -> np.ndarray:
    return np.arange(np.prod(shape)).reshape(shape).astype(dtype)


def test_volume_properties() -> None:
    affine = np.diag([-0.5, 2.0, 3.0, 1.0])
    volume = medvol.Volume(ramp((1, 4, 5, 6)), affine)
    assert volume.shape == (4, 5, 6)
    assert volume.num_channels == 1
    assert volume.spacing == (0.5, 2.0, 3.0)
    assert volume.orientation == "LAS"
    np.testing.assert_allclose(volume.world_coordinates(np.array([[1, 1, 1]])), [[-0.5, 2.0, 3.0]])


@pytest.mark.parametrize(
    ("array", "affine", "message"),
    [
        (np.zeros((4, 5, 6)), np.eye(4), r"\(C, X, Y, Z\)"),
        (np.zeros((1, 4, 5, 6)), np.zeros((4, 4)), "invertible"),
        (np.zeros((1, 4, 5, 6)), np.full((4, 4), np.nan), "invalid affine"),
    ],
)
def test_volume_rejects_bad_shapes_and_affines(array: np.ndarray, affine: np.ndarray, message: str) -> None:
    with pytest.raises(GeometryError, match=message):
        medvol.Volume(array, affine)


def test_nifti_oblique_affine_is_read_as_written(tmp_path: Path) -> None:
    """An oblique, sheared sform written by nibabel comes back as the hand-written numbers."""
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(ramp((6, 7, 8)), OBLIQUE), path)
    volume = medvol.load(path)
    np.testing.assert_allclose(volume.affine, OBLIQUE, rtol=0, atol=1e-6)  # the sform is float32
    # voxel (1, 2, 3) by hand: x = 0.9 - 0.6 + 0.3 - 20.5, y = 0.31 + 1.76 - 0.6 + 14.25,
    # z = -0.05 + 0.44 + 7.2 + 101; its value is 1·56 + 2·8 + 3 in the ramp
    np.testing.assert_allclose(
        volume.world_coordinates(np.array([[1, 2, 3]])), [[-19.9, 15.72, 108.59]], atol=1e-5
    )
    assert volume.array[0, 1, 2, 3] == 75


def test_nifti_qform_only_affine_is_read_as_written(tmp_path: Path) -> None:
    """A rotated grid stored only as a qform (quaternion, pixdim, offset): 30° about z, 0.8×0.8×2.5 mm."""
    cos, sin = np.sqrt(3) / 2, 0.5
    rotated = np.array(
        [
            [0.8 * cos, -0.8 * sin, 0.0, 10.0],
            [0.8 * sin, 0.8 * cos, 0.0, -5.0],
            [0.0, 0.0, 2.5, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    image = nib.Nifti1Image(ramp((4, 5, 6)), None)
    image.set_qform(rotated, code=1)
    image.set_sform(None, code=0)
    nib.save(image, tmp_path / "qform.nii")
    assert int(nib.load(tmp_path / "qform.nii").header["sform_code"]) == 0
    volume = medvol.load(tmp_path / "qform.nii")
    np.testing.assert_allclose(volume.affine, rotated, rtol=0, atol=1e-5)
    np.testing.assert_allclose(volume.spacing, (0.8, 0.8, 2.5), atol=1e-6)
    assert volume.orientation == "RAS"


def test_nifti_oblique_round_trip_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(ramp((6, 7, 8)), OBLIQUE), path)
    first = medvol.load(path)
    np.testing.assert_allclose(first.affine, OBLIQUE, rtol=0, atol=1e-6)
    medvol.save(first, tmp_path / "again.nii")
    second = medvol.load(tmp_path / "again.nii")
    np.testing.assert_array_equal(second.affine, first.affine)
    np.testing.assert_array_equal(second.array, first.array)
    header = nib.load(tmp_path / "again.nii").header
    assert int(header["sform_code"]) == 1
    assert int(header["qform_code"]) == 0  # OBLIQUE is sheared: a qform cannot hold it


def test_nifti_4d_becomes_channels_and_back(tmp_path: Path) -> None:
    data = ramp((5, 6, 7, 3), np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "four.nii.gz")
    volume = medvol.load(tmp_path / "four.nii.gz")
    assert volume.array.shape == (3, 5, 6, 7)
    np.testing.assert_array_equal(volume.array[2], data[..., 2])
    medvol.save(volume, tmp_path / "out.nii.gz")
    assert nib.load(tmp_path / "out.nii.gz").shape == (5, 6, 7, 3)


def test_nifti_scaling_is_applied(tmp_path: Path) -> None:
    image = nib.Nifti1Image(ramp((4, 4, 4)), np.eye(4))
    image.header.set_slope_inter(0.5, -10.0)
    nib.save(image, tmp_path / "scaled.nii")
    volume = medvol.load(tmp_path / "scaled.nii")
    assert volume.array.dtype.kind == "f"
    assert volume.array[0, 0, 0, 1] == pytest.approx(-9.5)


def test_bool_masks_are_saved_as_uint8(tmp_path: Path) -> None:
    mask = medvol.Volume(np.ones((1, 3, 3, 3), dtype=bool), np.eye(4))
    medvol.save(mask, tmp_path / "mask.nii.gz")
    assert medvol.load(tmp_path / "mask.nii.gz").array.dtype == np.uint8


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_formats_agree_with_simpleitk_world(tmp_path: Path, suffix: str) -> None:
    image = sitk.GetImageFromArray(ramp((8, 7, 6)))  # (Z, Y, X)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    rotation = sitk.VersorTransform((0.2, 0.3, 0.9), 0.4).GetMatrix()
    image.SetDirection(rotation)
    path = tmp_path / f"image{suffix}"
    sitk.WriteImage(image, str(path))
    volume = medvol.load(path)
    assert volume.shape == (6, 7, 8)
    for index in [(0, 0, 0), (5, 6, 7), (2, 3, 4)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = volume.world_coordinates(np.array([index]))[0]
        np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-9)
        assert volume.array[(0, *index)] == image[index]
    medvol.save(volume, tmp_path / f"again{suffix}")
    again = medvol.load(tmp_path / f"again{suffix}")
    np.testing.assert_allclose(again.affine, volume.affine, atol=1e-9)


def test_save_refuses_unknown_suffix_and_sheared_itk(tmp_path: Path) -> None:
    volume = medvol.Volume(ramp((1, 3, 3, 3)), OBLIQUE)
    with pytest.raises(UnreadableFileError, match=r"cannot write \.png"):
        medvol.save(volume, tmp_path / "out.png")
    with pytest.raises(GeometryError, match="sheared"):
        medvol.save(volume, tmp_path / "out.nrrd")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_save_is_atomic_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "scan.nii.gz"
    medvol.save(medvol.Volume(ramp((1, 3, 3, 3)), np.eye(4)), target)
    before = target.read_bytes()

    def broken_save(*args: object, **kwargs: object) -> None:
        Path(str(args[1])).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        medvol.save(medvol.Volume(ramp((1, 4, 4, 4)), np.eye(4)), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["scan.nii.gz"]


# ------------------------------------------------------------- hostile headers


def nifti_bytes(shape: tuple[int, ...], data: bytes, dtype: type = np.int16) -> bytes:
    """A NIfTI-1 single file whose header declares ``shape`` but whose voxels are ``data``."""
    header = nib.Nifti1Image(np.zeros((1, 1, 1), dtype), np.eye(4)).header
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_data_offset(352)
    return header.binaryblock + b"\0" * 4 + data


def gzip_members(*parts: bytes) -> bytes:
    import gzip

    return b"".join(gzip.compress(part) for part in parts)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        # 600 bytes declaring 1000³ int16: refused from the file size, before any allocation.
        ("huge.nii", nifti_bytes((1000, 1000, 1000), b"\1" * 248), r"2,000,000,352 bytes.*holds 600 bytes"),
        ("huger.nii", nifti_bytes((30000, 30000, 30000), b""), r"27000000000000 voxels|30000×30000×30000"),
        ("huge.nii.gz", gzip_members(nifti_bytes((1000, 1000, 1000), b"")), r"expand to at most"),
        # Incompressible voxels: the deflate bound allows it, the gzip trailer and a count refuse it.
        (
            "short.nii.gz",
            gzip_members(nifti_bytes((64, 64, 64), np.random.default_rng(0).bytes(100_000))),
            r"524,640 bytes.*decompresses to 100,352 bytes",
        ),
    ],
)
def test_declared_size_larger_than_the_file_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    def no_allocation(*args: object, **kwargs: object) -> None:
        raise AssertionError("voxels read before the header was checked against the file size")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", no_allocation)
    with pytest.raises(UnreadableFileError, match=message) as raised:
        medvol.load(path)
    assert str(path) in str(raised.value)


def test_multi_member_gzip_nifti_still_loads(tmp_path: Path) -> None:
    """The trailer names only the last gzip member: a valid file in two members is counted, not refused."""
    voxels = np.random.default_rng(1).integers(0, 1000, (40, 40, 40)).astype(np.int16).tobytes()
    content = nifti_bytes((40, 40, 40), voxels)
    path = tmp_path / "two-members.nii.gz"
    path.write_bytes(gzip_members(content[:5000], content[5000:]))
    volume = medvol.load(path)
    assert volume.shape == (40, 40, 40)
    assert volume.array[0].tobytes(order="F") == voxels  # NIfTI stores x fastest


def test_zero_or_negative_voxel_size_is_one_medvol_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = nib.Nifti1Image(ramp((4, 4, 4)), np.eye(4))
    image.header.set_sform(None, code=0)
    image.header.set_qform(None, code=0)
    raw = bytearray(image.header.binaryblock + b"\0" * 4 + ramp((4, 4, 4)).tobytes())
    raw[80:92] = np.array([0.0, -2.0, 1.5], dtype="<f4").tobytes()  # pixdim[1:4]
    path = tmp_path / "pixdim.nii"
    path.write_bytes(bytes(raw))
    from medvol.cli import main

    assert main(["info", str(path)]) == 0
    err = capsys.readouterr().err
    assert err.count("medvol: warning:") == 1, err
    assert "Level" not in err and "level 35" not in err
    (line,) = err.splitlines()
    assert line.startswith(f"medvol: warning: {path}:")
    assert "[0.0, -2.0, 1.5]" in line and "[1.0, 2.0, 1.5]" in line
    assert medvol.load(path).spacing == (1.0, 2.0, 1.5)


NRRD_HEADER = (
    "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 1000 1000 1000\n"
    "endian: little\nencoding: {encoding}\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n{extra}\n"
)
MHA_HEADER = (
    "ObjectType = Image\nNDims = 3\nDimSize = 1000 1000 1000\nElementType = MET_SHORT\n"
    "ElementDataFile = LOCAL\n"
)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("raw.nrrd", NRRD_HEADER.format(encoding="raw", extra="").encode() + b"\0" * 200, "raw.nrrd holds"),
        (
            "gzip.nrrd",
            NRRD_HEADER.format(encoding="gzip", extra="").encode() + gzip_members(b"\0" * 1000),
            "of compressed data expand to at most",
        ),
        ("text.nrrd", NRRD_HEADER.format(encoding="ascii", extra="").encode() + b"1 2 3\n", "hold at most"),
        ("short.mha", MHA_HEADER.encode() + b"\0" * 200, "short.mha holds"),
        ("detached.nhdr", NRRD_HEADER.format(encoding="raw", extra="data file: detached.raw\n").encode(), ""),
    ],
)
def test_itk_header_larger_than_its_data_is_refused_before_reading(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    """Without the check SimpleITK allocates the declared 2 GB before it finds the data short."""
    path = tmp_path / name
    path.write_bytes(content)
    (tmp_path / "detached.raw").write_bytes(b"\0" * 64)
    with pytest.raises(
        UnreadableFileError, match=r"declares 1000×1000×1000 voxels.*2,000,000,000 bytes"
    ) as raised:
        medvol.load(path)
    assert message in str(raised.value) and str(path) in str(raised.value)


@pytest.mark.parametrize("name", ["x.mhd", "xz.mhd", "y.nhdr", "yz.nhdr", "z.mha", "w.nrrd"])
def test_itk_files_with_detached_or_compressed_data_still_load(tmp_path: Path, name: str) -> None:
    array = np.random.default_rng(0).integers(0, 1000, (12, 10, 8)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / name), useCompression="z" in name)
    np.testing.assert_array_equal(medvol.load(tmp_path / name).array[0], array.transpose(2, 1, 0))
