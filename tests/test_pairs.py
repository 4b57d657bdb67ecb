"""Images and label maps paired by file name: suffixes (``brain1_image.nrrd``) and ``--pair`` patterns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medvol.cli import main
from medvol.data import validate, write_manifest
from medvol.errors import MedvolError

SHAPE = (5, 6, 7)  # (Z, Y, X) as SimpleITK takes arrays


def itk(path: Path, array: np.ndarray, spacing: tuple[float, float, float] = (0.8, 0.8, 2.5)) -> None:
    """Write an NRRD/MetaImage as a scanner export or 3D Slicer would: SimpleITK, LPS, spacing in mm."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.0, 30.0, 5.0))
    sitk.WriteImage(image, str(path))


def nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([0.9, 0.9, 3.0, 1.0])), path)


def scan(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, size=SHAPE).astype(np.int16)


def mask(values: tuple[int, ...] = (1,)) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    for number, value in enumerate(values):
        label[number % 5, number // 5 + 1, 1:6] = value
    return label


@pytest.fixture()
def suffix_folder(tmp_path: Path) -> Path:
    """One folder of pairs named by suffix, as pyradiomics, Slicer, BraTS and PROMISE12 name them."""
    root = tmp_path / "radiomics"
    itk(root / "brain1_image.nrrd", scan(1))
    itk(root / "brain1_label.nrrd", mask())
    itk(root / "brain2_img.nrrd", scan(2))
    itk(root / "brain2-label.nrrd", mask())
    itk(root / "Case00.mhd", scan(3))  # PROMISE12: the image has no suffix at all
    itk(root / "Case00_segmentation.mhd", mask())
    nifti(root / "BraTS_001_t1.nii.gz", scan(4).astype(np.float32))
    nifti(root / "BraTS_001_seg.nii.gz", mask())
    # Ambiguous: two label maps for one image, two images for one label map.
    itk(root / "lung1_image.nrrd", scan(5))
    itk(root / "lung1_label.nrrd", mask())
    itk(root / "lung1_mask.nrrd", mask())
    itk(root / "lung2.nrrd", scan(6))
    itk(root / "lung2_image.nrrd", scan(7))
    itk(root / "lung2_label.nrrd", mask())
    itk(root / "breast1_image.nrrd", scan(8))  # no label
    itk(root / "prostate_label.nrrd", mask())  # no image
    itk(root / "baseline" / "old_label.nrrd", mask())  # below the folder: not read, and said so
    (root / "README.txt").write_text("test data")
    return root


def test_pairs_named_by_suffix_are_cases(suffix_folder: Path) -> None:
    report = validate(suffix_folder)
    assert report.layout == "pairs"
    usable = {case.case_id: (case.images[0].name, case.label and case.label.name) for case in report.usable}
    assert usable == {
        "brain1": ("brain1_image.nrrd", "brain1_label.nrrd"),
        "brain2": ("brain2_img.nrrd", "brain2-label.nrrd"),
        "Case00": ("Case00.mhd", "Case00_segmentation.mhd"),
    }
    found = sorted((f.kind, f.case_id) for f in report.findings)
    assert found == [
        ("ambiguous_pair", "lung1"),
        ("ambiguous_pair", "lung2"),
        ("image_without_label", "BraTS_001_t1"),  # BraTS names channels by modality: a --pair pattern
        ("image_without_label", "breast1"),
        ("label_without_image", "BraTS_001"),
        ("label_without_image", "prostate"),
        ("not_used", None),
    ]
    lung1 = next(f for f in report.findings if f.case_id == "lung1")
    assert "lung1_label.nrrd" in lung1.message and "lung1_mask.nrrd" in lung1.message
    lung2 = next(f for f in report.findings if f.case_id == "lung2")
    assert "lung2.nrrd" in lung2.message and "lung2_image.nrrd" in lung2.message
    # Never a guess: an ambiguous case has neither of its candidates.
    assert next(c for c in report.cases if c.case_id == "lung1").label is None
    assert next(c for c in report.cases if c.case_id == "lung2").images == ()
    breast1 = next(f for f in report.findings if f.case_id == "breast1")
    assert "none named breast1 + _label, " in breast1.message  # what was looked for
    not_used = next(f for f in report.findings if f.kind == "not_used")
    assert "1 scan file" in not_used.message and not_used.path == str(suffix_folder / "baseline")


def test_index_cli_on_suffix_pairs_writes_a_manifest_that_reads_back(
    suffix_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "cases.csv"
    assert main(["index", str(suffix_folder), "--out", str(out)]) == 1  # some cases are unusable
    rows = {row["case_id"]: row for row in csv.DictReader(out.open())}
    assert rows["brain1"]["usable"] == "1" and rows["brain1"]["label"].endswith("brain1_label.nrrd")
    assert rows["lung1"]["usable"] == "0" and "2 label maps" in rows["lung1"]["problems"]
    reread = validate(out)
    assert sorted(case.case_id for case in reread.usable) == ["Case00", "brain1", "brain2"]


def test_clean_suffix_folder_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for number in range(3):
        itk(tmp_path / "data" / f"brain{number}_image.nrrd", scan(number))
        itk(tmp_path / "data" / f"brain{number}_label.nrrd", mask())
    assert main(["index", str(tmp_path / "data"), "--out", str(tmp_path / "cases.csv")]) == 0
    assert "pairs layout, 3 case ids, 3 usable pairs" in capsys.readouterr().out


def test_a_folder_of_images_without_label_suffixes_is_not_taken_for_pairs(tmp_path: Path) -> None:
    itk(tmp_path / "scans" / "a.nrrd", scan(0))
    itk(tmp_path / "scans" / "b_image.nrrd", scan(1))
    with pytest.raises(MedvolError, match="unknown layout") as refused:
        validate(tmp_path / "scans")
    assert "ID_label" in str(refused.value) and "--pair IMAGE_PATTERN LABEL_PATTERN" in str(refused.value)


# ----------------------------------------------------------------------------- --pair patterns


def test_pair_patterns_with_folders_and_prefixes(tmp_path: Path) -> None:
    kits = tmp_path / "kits"  # KiTS: case_00000/imaging.nii.gz + case_00000/segmentation.nii.gz
    for number in range(2):
        nifti(kits / f"case_{number:05d}" / "imaging.nii.gz", scan(number).astype(np.float32))
        nifti(kits / f"case_{number:05d}" / "segmentation.nii.gz", mask((1, 2)))
    nifti(kits / "case_00002" / "imaging.nii.gz", scan(2).astype(np.float32))
    report = validate(kits, pair=("{id}/imaging.nii.gz", "{id}/segmentation.nii.gz"))
    assert report.layout == "pattern"
    assert [c.case_id for c in report.usable] == ["case_00000", "case_00001"]
    assert [(f.kind, f.case_id) for f in report.findings] == [("image_without_label", "case_00002")]
    assert "none named case_00002/segmentation.nii.gz" in report.findings[0].message

    brats = tmp_path / "brats"  # {id} twice: BraTS_002/BraTS_002_seg.nii.gz
    for number, case in enumerate(("BraTS_001", "BraTS_002")):
        nifti(brats / case / f"{case}_t1.nii.gz", scan(3 + number).astype(np.float32))
        nifti(brats / case / f"{case}_seg.nii.gz", mask())
    nifti(brats / "BraTS_001" / "BraTS_002_seg.nii.gz", mask())  # not BraTS_001's: {id} is the same text
    report = validate(brats, pair=("{id}/{id}_t1.nii.gz", "{id}/{id}_seg.nii.gz"))
    assert [(c.case_id, c.label and c.label.parent.name) for c in report.usable] == [
        ("BraTS_001", "BraTS_001"),
        ("BraTS_002", "BraTS_002"),
    ]
    assert report.findings == []


def test_pair_cli_label_pattern_wins_over_a_wider_image_pattern(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for case in ("p1", "p2"):
        itk(root / f"{case}.nrrd", scan(len(case) + int(case[1])))
        itk(root / f"{case}_roi.nrrd", mask())
    itk(root / "bad name_roi.nrrd", mask())
    out = tmp_path / "cases.csv"
    assert main(["index", str(root), "--out", str(out), "--pair", "{id}.nrrd", "{id}_roi.nrrd"]) == 1
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["layout"] == "pattern" and report["usable_pairs"] == 2
    assert [(f["kind"], f["case_id"]) for f in report["findings"]] == [("unsafe_case_id", None)]
    assert "'bad name'" in report["findings"][0]["message"]


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("image.nrrd", "has no {id}"),
        ("../{id}.nrrd", "inside the folder"),
        ("/data/{id}.nrrd", "inside the folder"),
        ("{id}_label.nrrd", "are the same"),
    ],
)
def test_pair_patterns_that_cannot_name_a_case_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pattern: str, problem: str
) -> None:
    itk(tmp_path / "x_label.nrrd", mask())
    out = tmp_path / "out.csv"
    assert main(["index", str(tmp_path), "--out", str(out), "--pair", pattern, "{id}_label.nrrd"]) == 1
    error = capsys.readouterr().err
    assert problem in error and pattern in error and "unexpected" not in error
    assert not out.exists()


# ----------------------------------------------------------------------------- label values without classes


def test_label_values_unlike_the_others_are_reported_without_classes(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for number in range(4):
        nifti(root / "images" / f"c{number}.nii.gz", scan(number).astype(np.float32))
        nifti(root / "labels" / f"c{number}.nii.gz", mask())
    nifti(root / "images" / "instances.nii.gz", scan(9).astype(np.float32))
    nifti(root / "labels" / "instances.nii.gz", mask(tuple(range(1, 10))))
    report = validate(root)
    assert [(f.kind, f.severity, f.case_id) for f in report.findings] == [
        ("unusual_label_values", "warning", "instances")
    ]
    message = report.findings[0].message
    assert "[2, 3, 4, 5, 6, 7, 8, 9]" in message and "most of the 5 hold only [0, 1]" in message
    assert len(report.usable) == 5  # a warning: the user decides
    # Declared classes replace the guess by the strict check.
    strict = validate(root, classes=[0, 1])
    assert [(f.kind, f.severity, f.case_id) for f in strict.findings] == [
        ("label_values", "error", "instances")
    ]
    assert not [f for f in validate(root, classes=list(range(10))).findings]


def test_written_manifest_of_pairs_keeps_the_label_check(suffix_folder: Path, tmp_path: Path) -> None:
    itk(suffix_folder / "odd_image.nrrd", scan(11))
    itk(suffix_folder / "odd_label.nrrd", (scan(11) % 7).astype(np.uint8))  # an image saved as a label
    report = validate(suffix_folder)
    odd = [f for f in report.findings if f.kind == "unusual_label_values"]
    assert [f.case_id for f in odd] == ["odd"] and "[2, 3, 4, 5, 6]" in odd[0].message
    again = validate(write_manifest(report, tmp_path / "cases.csv"))
    assert [f.case_id for f in again.findings if f.kind == "unusual_label_values"] == ["odd"]


def test_a_link_that_leads_nowhere_is_named_not_dropped(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for case in ("a", "b"):
        itk(root / f"{case}_image.nrrd", scan(ord(case)))
        itk(root / f"{case}_label.nrrd", mask())
    (root / "c_image.nrrd").symlink_to(tmp_path / "gone.nrrd")
    itk(root / "c_label.nrrd", mask())
    report = validate(root)
    assert [c.case_id for c in report.usable] == ["a", "b"]
    assert [(f.kind, f.case_id, Path(f.path or "").name) for f in report.findings] == [
        ("unreadable", "c", "c_image.nrrd")
    ]


def test_index_options_that_a_medmnist_file_cannot_use_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "tiny.npz"
    images = np.zeros((2, 28, 28, 28), np.uint8)
    labels = np.zeros((2, 1), np.uint8)
    np.savez(
        file,
        **{f"{s}_images": images for s in ("train", "val", "test")},
        **{f"{s}_labels": labels for s in ("train", "val", "test")},
    )
    out = tmp_path / "out.csv"
    assert main(["index", str(file), "--out", str(out), "--pair", "{id}.nrrd", "{id}_label.nrrd"]) == 1
    assert "--pair is for folders and manifests" in capsys.readouterr().err and not out.exists()
    assert main(["index", str(file), "--out", str(out)]) == 0


def test_real_hippocampus_scans_renamed_as_suffix_pairs(shared_data: Path, tmp_path: Path) -> None:
    """Real MSD scans named as a radiomics folder names them read back as the same cases and findings."""
    source = shared_data / "msd-hippocampus"
    root = tmp_path / "pairs"
    root.mkdir()
    for number in ("001", "003", "004", "006", "007", "118"):
        (root / f"hippocampus_{number}_image.nii.gz").symlink_to(
            source / "images" / f"hippocampus_{number}.nii.gz"
        )
        if (source / "labels" / f"hippocampus_{number}.nii.gz").exists():
            (root / f"hippocampus_{number}_seg.nii.gz").symlink_to(
                source / "labels" / f"hippocampus_{number}.nii.gz"
            )
    report = validate(root)
    assert report.layout == "pairs"
    assert [c.case_id for c in report.usable] == [
        f"hippocampus_{n}" for n in ("001", "003", "004", "006", "007")
    ]
    # Labels 0, 1, 2 in every map: nothing unusual; the rest is found as in the MSD folder.
    assert sorted((f.kind, f.case_id or "") for f in report.findings) == [
        ("dtype_mix", ""),
        ("float_label", "hippocampus_003"),
        ("image_without_label", "hippocampus_118"),
    ]
    assert main(["plan", str(root), "--out", str(tmp_path / "plan.yaml")]) == 0
    assert "spacing_mm: [1.0, 1.0, 1.0]" in (tmp_path / "plan.yaml").read_text()


def test_pair_pattern_images_may_be_dicom_series_folders(tmp_path: Path) -> None:
    from medvol.io import load, save
    from medvol.volume import Volume
    from tests.dicom_factory import Geometry, write_series

    root = tmp_path / "study"
    for number, case in enumerate(("p01", "p02")):
        write_series(root / case / "CT", Geometry(), series_number=1, seed=number)
        image = load(root / case / "CT")
        save(
            Volume((image.array > image.array.mean()).astype(np.uint8), image.affine, {}),
            root / case / "gtv.nii.gz",
        )
    report = validate(root, pair=("{id}/CT", "{id}/gtv.nii.gz"))
    assert [(c.case_id, c.images[0].name) for c in report.usable] == [("p01", "CT"), ("p02", "CT")]
    assert report.findings == []
