"""Case discovery and validation (``medvol index``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medvol.cli import main
from medvol.data import validate, write_manifest
from medvol.data.cases import declared_classes, load_case
from medvol.errors import MedvolError


def write(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)


@pytest.fixture()
def msd_folder(tmp_path: Path) -> Path:
    """An MSD-layout dataset with two channels and one problem of each kind."""
    root = tmp_path / "Task99"
    rng = np.random.default_rng(0)
    (root / "dataset.json").parent.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "tumour"}}))
    label = np.zeros((6, 6, 6), np.uint8)
    label[2:4, 2:4, 2:4] = 1
    for case in ("ok_1", "ok_2", "shifted", "bad_values", "twin", "broken"):
        for channel in (0, 1):
            write(
                root / "imagesTr" / f"{case}_{channel:04d}.nii.gz",
                rng.normal(size=(6, 6, 6)).astype(np.float32),
            )
        write(root / "labelsTr" / f"{case}.nii.gz", label)
    write(root / "labelsTr" / "shifted.nii.gz", label, np.diag([1.0, 1.0, 2.0, 1.0]))
    write(root / "labelsTr" / "bad_values.nii.gz", label * 3)
    for channel in (0, 1):  # same content as ok_1
        source = root / "imagesTr" / f"ok_1_{channel:04d}.nii.gz"
        (root / "imagesTr" / f"twin_{channel:04d}.nii.gz").write_bytes(source.read_bytes())
    (root / "imagesTr" / "broken_0001.nii.gz").write_bytes(b"\x1f\x8b truncated")
    write(root / "imagesTr" / "lonely_0000.nii.gz", np.zeros((6, 6, 6), np.float32))
    return root


def test_msd_layout_findings(msd_folder: Path) -> None:
    report = validate(msd_folder)
    assert report.layout == "msd"
    assert [c.case_id for c in report.usable] == ["ok_1", "ok_2"]
    ok = next(c for c in report.cases if c.case_id == "ok_1")
    assert [p.name for p in ok.images] == ["ok_1_0000.nii.gz", "ok_1_0001.nii.gz"]
    kinds = {(f.case_id, f.kind) for f in report.findings}
    assert kinds == {
        ("shifted", "grid_mismatch"),
        ("bad_values", "label_values"),
        ("twin", "duplicate_case"),
        ("broken", "unreadable"),
        ("lonely", "image_without_label"),
    }
    bad_values = next(f for f in report.findings if f.kind == "label_values")
    assert "[3]" in bad_values.message and "[0, 1]" in bad_values.message
    broken = next(f for f in report.findings if f.kind == "unreadable")
    assert broken.path is not None and broken.path.endswith("broken_0001.nii.gz")


def test_index_cli_writes_manifest_and_report(msd_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "cases.csv"
    assert main(["index", str(msd_folder), "--out", str(out)]) == 1  # some cases are unusable
    rows = list(csv.DictReader(out.open()))
    assert {r["case_id"]: r["usable"] for r in rows}["ok_1"] == "1"
    assert {r["case_id"]: r["usable"] for r in rows}["shifted"] == "0"
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["usable_pairs"] == 2


def test_written_manifest_reads_back_as_the_same_cases(msd_folder: Path, tmp_path: Path) -> None:
    original = validate(msd_folder)
    manifest = write_manifest(original, tmp_path / "cases.csv")
    reread = validate(manifest, classes=declared_classes(msd_folder))  # a CSV has no dataset.json
    assert [(c.case_id, c.images, c.label) for c in reread.cases] == [
        (c.case_id, c.images, c.label) for c in original.cases
    ]
    assert sorted(c.case_id for c in reread.usable) == sorted(c.case_id for c in original.usable)


def test_hippocampus_reports_exactly_the_known_anomalies(shared_data: Path) -> None:
    report = validate(shared_data / "msd-hippocampus")
    assert len(report.usable) == 260
    found = sorted((f.kind, f.case_id) for f in report.findings)
    assert found == [
        ("dtype_mix", None),
        ("float_label", "hippocampus_003"),
        ("float_label", "hippocampus_243"),
        ("image_without_label", "hippocampus_118"),
        ("label_without_image", "hippocampus_010"),
        ("label_without_image", "hippocampus_281"),
    ]
    mix = next(f for f in report.findings if f.kind == "dtype_mix")
    assert "55 uint8" in mix.message


def test_csv_manifest_for_classification_with_patients(tmp_path: Path) -> None:
    for number, name in enumerate("abcd"):
        write(tmp_path / "scans" / f"{name}.nii.gz", np.full((4, 4, 4), number, np.float32))
    (tmp_path / "cases.csv").write_text(
        "case_id,image,class,patient_id\n"
        "case-a,scans/a.nii.gz,1,p1\n"
        "case-b,scans/b.nii.gz,0,p1\n"
        "../escape,scans/c.nii.gz,0,p2\n"
        "case-d,scans/missing.nii.gz,1,p3\n"
        "case-e,scans/d.nii.gz,0,p4\n"
        "case-e,scans/c.nii.gz,1,p5\n"
    )
    report = validate(tmp_path / "cases.csv")
    assert report.layout == "manifest"
    # An id given twice is ambiguous: neither row is used.
    assert [(c.case_id, c.target, c.patient_id) for c in report.usable] == [
        ("case-a", "1", "p1"),
        ("case-b", "0", "p1"),
    ]
    kinds = sorted(f.kind for f in report.findings)
    assert kinds == ["duplicate_case", "unreadable", "unsafe_case_id"]
    unreadable = next(f for f in report.findings if f.kind == "unreadable")
    assert unreadable.case_id == "case-d" and "no such file" in unreadable.message


def test_manifest_without_image_column_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cases.csv").write_text("scan,label\nx.nii.gz,y.nii.gz\n")
    with pytest.raises(MedvolError, match=r"no 'image' \(or 'clip'\) column"):
        validate(tmp_path / "cases.csv")


def test_dicom_folders_become_unlabelled_cases(tmp_path: Path) -> None:
    from tests.dicom_factory import Geometry, write_series

    root = tmp_path / "scans"
    first = write_series(root / "patient-a" / "study", Geometry(), series_number=1)
    write_series(root / "patient-b", Geometry(slices=5), series_number=1)
    write_series(root / "patient-b", Geometry(rows=8, columns=8), series_number=2, seed=1)
    broken = write_series(root / "patient-c", Geometry(), series_number=1)
    victim = next(p for p in (root / "patient-c").iterdir())
    victim.write_bytes(victim.read_bytes()[:300])
    (root / "notes.txt").write_text("not an image")
    report = validate(root)
    assert report.layout == "dicom"
    assert len(report.cases) == 4
    assert all(c.case_id.startswith("dicom-") and c.series is not None for c in report.cases)
    assert validate(root).cases == report.cases  # stable ids
    unreadable = [f for f in report.findings if f.kind == "unreadable"]
    assert any(f.path == str(victim) for f in unreadable)
    patient_c = next(c for c in report.cases if c.images[0] == root / "patient-c")
    assert patient_c.case_id in report.unusable_ids
    two = [c for c in report.cases if c.images[0] == root / "patient-b"]
    shapes = sorted(load_case(c)[0].shape for c in two)
    assert shapes == [(8, 8, 8), (16, 12, 5)]
    assert first is not None and broken is not None
    # Patient folder names are paths, not ids: nothing of "patient" leaks into case ids.
    assert not any("patient" in c.case_id for c in report.cases)


# ----------------------------------------------------------------------------- DICOM folders in a manifest


def _write_rows(path: Path, columns: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def test_manifest_of_dicom_folders_finds_duplicates_by_series_files(tmp_path: Path) -> None:
    from tests.dicom_factory import Geometry, write_series

    write_series(tmp_path / "a", Geometry(), seed=0)
    # The same series copied under other file names is the same case.
    (tmp_path / "copy").mkdir()
    for number, file in enumerate(sorted((tmp_path / "a").iterdir())):
        (tmp_path / "copy" / f"IM{number:04d}").write_bytes(file.read_bytes())
    # Two series in one folder are two cases, not duplicates of each other.
    write_series(tmp_path / "two", Geometry(), series_number=1, base=100, seed=1)
    write_series(tmp_path / "two", Geometry(), series_number=2, base=2000, seed=2)
    manifest = _write_rows(
        tmp_path / "cases.csv",
        ["case_id", "image", "class", "series"],
        [
            ["a", "a", "1", ""],
            ["copy", "copy", "0", ""],
            ["two-1", "two", "0", "1"],
            ["two-2", "two", "1", "2"],
        ],
    )
    report = validate(manifest)
    assert [c.case_id for c in report.usable] == ["a", "two-1", "two-2"]
    assert [(f.kind, f.case_id, f.message) for f in report.findings] == [
        ("duplicate_case", "copy", "same image content as case a")
    ]


def test_real_ct_series_in_segmentation_and_classification_manifests(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medvol.io import load, save
    from medvol.volume import Volume

    series = shared_data / "dicom" / "ct-jpeg2000-series"
    image = load(series)
    mask = (image.array > 0).astype(np.uint8)  # on the series' own grid
    save(Volume(mask, image.affine, {}), tmp_path / "mask.nii.gz")
    segmentation = _write_rows(
        tmp_path / "seg.csv", ["case_id", "image", "label"], [["ct", str(series), "mask.nii.gz"]]
    )
    classification = _write_rows(
        tmp_path / "cls.csv",
        ["case_id", "image", "class"],
        [["ct", str(series), "1"], ["ct-again", str(series), "0"]],
    )
    assert main(["index", str(segmentation), "--out", str(tmp_path / "seg-out.csv")]) == 0
    assert main(["index", str(classification), "--out", str(tmp_path / "cls-out.csv")]) == 1
    out = capsys.readouterr().out
    assert "unexpected" not in out and "same image content as case ct" in out
    report = json.loads((tmp_path / "cls-out.report.json").read_text())
    assert report["usable_pairs"] == 1 and report["unusable"] == ["ct-again"]
    assert main(["plan", str(tmp_path / "seg-out.csv"), "--out", str(tmp_path / "plan.yaml")]) == 0
    assert "spacing_mm: [0.9766, 0.9766, 2.0]" in (tmp_path / "plan.yaml").read_text()


# ----------------------------------------------------------------------------- the index verb


def test_written_manifest_reads_back_from_another_folder(
    msd_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(msd_folder.parent)
    main(["index", msd_folder.name, "--out", "elsewhere/deeper/cases.csv"])
    written = Path("elsewhere/deeper/cases.csv")
    rows = list(csv.DictReader(written.open()))
    assert all(not Path(r["images"].split(";")[0]).is_absolute() for r in rows)
    monkeypatch.chdir(tmp_path.parent)  # read from anywhere: paths are the manifest's own
    reread = validate(msd_folder.parent / written, classes=[0, 1])
    original = validate(msd_folder)
    assert (
        sorted(c.case_id for c in reread.usable)
        == sorted(c.case_id for c in original.usable)
        == ["ok_1", "ok_2"]
    )
    for again, first in zip(reread.cases, original.cases, strict=True):
        assert [p.resolve() for p in again.images] == [p.resolve() for p in first.images]
        assert (again.label and again.label.resolve()) == (first.label and first.label.resolve())


def test_index_exit_status_says_whether_every_case_is_usable(
    msd_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = tmp_path / "clean"
    for case in ("a", "b"):
        write(clean / "images" / f"{case}.nii.gz", np.zeros((4, 4, 4), np.float32) + ord(case))
        write(clean / "labels" / f"{case}.nii.gz", np.zeros((4, 4, 4), np.uint8))
    assert main(["index", str(clean), "--out", str(tmp_path / "clean.csv")]) == 0
    assert "index: 2/2 cases (100%)" in capsys.readouterr().out  # progress, plain without a terminal
    # Errors: exit 1, and the manifest and report are still written.
    assert main(["index", str(msd_folder), "--out", str(tmp_path / "msd.csv"), "--json"]) == 1
    json.loads(capsys.readouterr().out)  # --json: stdout is the report alone, no progress lines
    assert (tmp_path / "msd.csv").is_file() and (tmp_path / "msd.report.json").is_file()
    # Nothing usable: exit 1.
    unlabelled = tmp_path / "unlabelled"
    write(unlabelled / "images" / "a.nii.gz", np.zeros((4, 4, 4), np.float32))
    assert main(["index", str(unlabelled), "--out", str(tmp_path / "none.csv")]) == 1
    assert json.loads((tmp_path / "none.report.json").read_text())["usable_pairs"] == 0


def test_index_refuses_classes_that_are_not_integers(
    msd_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["index", str(msd_folder), "--out", str(tmp_path / "x.csv"), "--classes", "a,b"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--classes" in error and "'a,b'" in error and "unexpected" not in error
    assert not (tmp_path / "x.csv").exists()


def test_a_label_stored_in_another_axis_order_is_read_onto_the_image_grid(tmp_path: Path) -> None:
    """A mask written LAS beside an LPS image holds the same voxels: read exactly, and said so."""
    from medvol.data.cases import validate
    from medvol.data.loading import load_files
    from medvol.io import save
    from medvol.transforms.preprocess import reorient
    from medvol.volume import Volume

    rng = np.random.default_rng(3)
    lps = np.diag([-1.2, -0.9, 2.5, 1.0])
    lps[:3, 3] = [10.0, -4.0, 7.0]
    image = Volume(rng.normal(size=(1, 6, 7, 5)).astype(np.float32), lps)
    label = Volume((rng.random((1, 6, 7, 5)) > 0.5).astype(np.uint8), lps)
    flipped, _ = reorient(label, "LAS")
    assert flipped.orientation == "LAS" and not np.allclose(flipped.affine, image.affine)
    for kind, volume in (("images", image), ("labels", flipped)):
        save(volume, tmp_path / kind / "case_1.nii.gz")
    loaded_image, loaded_label = load_files(
        [tmp_path / "images/case_1.nii.gz"], tmp_path / "labels/case_1.nii.gz"
    )
    assert loaded_label is not None and loaded_label.meta["reoriented_from"] == "LAS"
    np.testing.assert_array_equal(loaded_label.array, label.array)
    np.testing.assert_allclose(loaded_label.affine, loaded_image.affine, atol=1e-4)
    report = validate(tmp_path)
    assert [case.case_id for case in report.usable] == ["case_1"]
    assert [f.kind for f in report.findings] == ["reoriented"]
