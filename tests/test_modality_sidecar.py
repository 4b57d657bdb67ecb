"""What a DICOM series' header says beyond geometry, kept through conversion (issue 12).

``medvol convert`` writes the modality, patient position and image type in a
JSON sidecar (``scan.nii.gz`` → ``scan.json``, dcm2niix's key names) that
``medvol.load`` reads back, so ``medvol plan`` on converted scans chooses CT
or MR normalisation as it would on the DICOM series; ``medvol info`` shows
PatientPosition and ImageType.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

import medvol
from medvol.cli import main
from medvol.data.fingerprint import choose_modality
from medvol.io import save
from medvol.io.describe import describe, format_summary
from medvol.volume import Volume
from tests.dicom_factory import IDENTIFIERS, PATIENT_NAME, Geometry, SeriesTruth, write_series

SIDECAR_KEYS = {"Modality", "PatientPosition", "ImageType", "SeriesNumber"}
SOFTWARE_KEYS = {"ConversionSoftware", "ConversionSoftwareVersion"}


def set_header(series: SeriesTruth, **values: object) -> None:
    """Rewrite every slice of ``series`` with the given header values."""
    for item in series.slices:
        dataset = pydicom.dcmread(item.path)
        for keyword, value in values.items():
            setattr(dataset, keyword, value)
        dataset.save_as(item.path, enforce_file_format=True)


@pytest.fixture()
def ct_series(tmp_path: Path) -> SeriesTruth:
    # A description typed at the scanner that names the patient: it must not travel.
    description = f"CT {PATIENT_NAME}"
    return write_series(tmp_path / "ct", Geometry(slices=4), description=description, series_number=7)


def test_convert_keeps_modality_position_and_image_type_in_a_sidecar_without_identifiers(
    ct_series: SeriesTruth, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "out" / "scan.nii.gz"
    assert main(["convert", str(ct_series.folder), str(target)]) == 0
    assert "scan.json  modality CT" in capsys.readouterr().out
    sidecar = tmp_path / "out" / "scan.json"
    text = sidecar.read_text()
    for identifier in IDENTIFIERS:
        assert identifier not in text
    content = json.loads(text)
    assert set(content) == SIDECAR_KEYS | SOFTWARE_KEYS
    assert content["Modality"] == "CT"
    assert content["PatientPosition"] == "HFS"
    assert content["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert content["SeriesNumber"] == 7
    assert content["ConversionSoftware"] == "medvol"
    assert sorted(p.name for p in sidecar.parent.iterdir()) == ["scan.json", "scan.nii.gz"]  # no temporaries

    loaded = medvol.load(target)
    assert loaded.meta["modality"] == "CT"
    assert loaded.meta["patient_position"] == "HFS"
    assert loaded.meta["image_type"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert loaded.meta["series_number"] == 7
    assert loaded.meta["sidecar"] == str(sidecar)
    # Converting the converted file again (to NRRD) keeps it too.
    assert main(["convert", str(target), str(tmp_path / "again.nrrd")]) == 0
    assert medvol.load(tmp_path / "again.nrrd").meta["modality"] == "CT"
    assert json.loads((tmp_path / "again.json").read_text())["Modality"] == "CT"


def test_a_dcm2niix_sidecar_is_read_too(shared_data: Path) -> None:
    reference = shared_data / "dicom" / "ct-jpeg2000-series-reference" / "example_ct_dicom.nii.gz"
    volume = medvol.load(reference)
    assert volume.meta["modality"] == "CT"
    assert volume.meta["patient_position"] == "HFS"
    assert volume.meta["image_type"] == ["ORIGINAL", "PRIMARY", "AXIAL", "CT", "SOM5 SPI"]


def test_plan_of_converted_ct_scans_normalises_as_ct(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "dataset"
    for number, case in enumerate(("a", "b", "c")):
        series = write_series(tmp_path / case, Geometry(slices=4), base=100 + 1000 * number, seed=number)
        assert main(["convert", str(series.folder), str(root / "images" / f"{case}.nii.gz")]) == 0
        image = medvol.load(root / "images" / f"{case}.nii.gz")
        label = (image.array > np.median(image.array)).astype(np.uint8)
        save(Volume(label, image.affine), root / "labels" / f"{case}.nii.gz")
    out = tmp_path / "plan.yaml"
    with caplog.at_level(logging.WARNING, logger="medvol"):
        assert main(["plan", str(root), "--out", str(out)]) == 0
    assert not [r for r in caplog.records if "modality" in r.getMessage()]
    plan = yaml.safe_load(out.read_text())
    assert plan["normalize"]["params"] == {
        "per_scan": False,
        "use_foreground_mask": True,
        "clip_percentiles": [0.5, 99.5],
    }
    assert "# Modality: CT; the cases' metadata says CT: 3." in out.read_text()
    assert json.loads(out.with_suffix(".fingerprint.json").read_text())["modalities"] == {"CT": 3}

    # One case without its sidecar: still CT, and a warning says how many are unknown.
    (root / "images" / "b.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medvol"):
        assert main(["plan", str(root), "--out", str(out)]) == 0
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "modality unknown for 1 of 3 cases" in warning and "planned as CT" in warning
    assert yaml.safe_load(out.read_text())["normalize"]["params"]["per_scan"] is False


def test_plan_says_which_default_it_used_when_no_case_has_a_modality(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "plan.yaml"
    with caplog.at_level(logging.WARNING, logger="medvol"):
        assert main(["plan", str(shared_data / "msd-hippocampus"), "--out", str(out)]) == 0
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "modality unknown for all 260 cases" in warning
    assert "z-score per scan" in warning and "--modality" in warning


def test_choose_modality_warns_on_mixed_and_contradicted_modalities(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="medvol"):
        assert choose_modality(["CT", "CT"]) == "CT"
        assert not caplog.records
        assert choose_modality(["CT", "MR", None]) is None
        assert "several modalities (CT: 1, MR: 1, unknown: 1)" in caplog.records[-1].getMessage()
        assert choose_modality(["CT", "CT", None], given="MR") == "MR"
        assert "2 of 3 cases says otherwise (CT: 2)" in caplog.records[-1].getMessage()


def test_info_shows_patient_position_and_image_type(
    ct_series: SeriesTruth, capsys: pytest.CaptureFixture[str]
) -> None:
    set_header(ct_series, PatientPosition="HFDL", ImageType=["DERIVED", "SECONDARY"])
    assert main(["info", str(ct_series.folder)]) == 0
    out = capsys.readouterr().out
    assert "patient_position   HFDL" in out
    assert "image_type         DERIVED\\SECONDARY" in out
    assert main(["info", str(ct_series.folder), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["patient_position"] == "HFDL"
    assert summary["image_type"] == ["DERIVED", "SECONDARY"]


def test_slices_that_disagree_are_counted_not_hidden(ct_series: SeriesTruth) -> None:
    dataset = pydicom.dcmread(ct_series.slices[0].path)
    dataset.PatientPosition = "FFS"
    dataset.ImageType = "DERIVED"  # a single value
    dataset.save_as(ct_series.slices[0].path, enforce_file_format=True)
    volume = medvol.load(ct_series.folder)
    assert volume.meta["patient_position"] is None
    assert volume.meta["patient_position_per_slice"] == {"FFS": 1, "HFS": 3}
    assert volume.meta["image_type"] is None
    assert volume.meta["image_type_per_slice"] == {"DERIVED": 1, "ORIGINAL\\PRIMARY\\AXIAL": 3}
    assert "patient_position_per_slice" in format_summary(describe(volume))


def test_real_series_position_and_image_type_match_its_headers(shared_data: Path) -> None:
    folder = shared_data / "dicom" / "ct-jpeg2000-series"
    header = pydicom.dcmread(sorted(folder.iterdir())[0], stop_before_pixels=True)
    summary = describe(medvol.load(folder))
    assert summary["patient_position"] == header.PatientPosition == "HFS"
    assert summary["image_type"] == list(header.ImageType)
    assert summary["image_type"][:3] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    mosaic = describe(medvol.load(shared_data / "dicom" / "transfer-syntaxes" / "In" / "1.dcm"))
    assert mosaic["patient_position"] == "HFS"
    assert mosaic["image_type"] == ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]


def test_a_broken_sidecar_is_named_and_the_image_still_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = save(Volume(np.zeros((1, 2, 2, 2), np.int16), np.eye(4)), tmp_path / "scan.nii.gz")
    for content, expected in (
        ("{not json", "not a readable JSON sidecar"),
        ("[1, 2]", "must hold an object"),
        ('{"Modality": 3, "ImageType": "ORIGINAL"}', "Modality 3 is not a text"),
    ):
        (tmp_path / "scan.json").write_text(content)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="medvol"):
            volume = medvol.load(path)
        assert volume.meta["modality"] is None
        assert "image_type" not in volume.meta
        warning = " ".join(r.getMessage() for r in caplog.records)
        assert str(tmp_path / "scan.json") in warning and expected in warning


def test_convert_never_leaves_a_sidecar_that_describes_another_scan(
    ct_series: SeriesTruth, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "scan.nii.gz"
    sidecar = tmp_path / "scan.json"
    sidecar.write_text('{"Modality": "MR"}')  # someone else's
    assert main(["convert", str(ct_series.folder), str(target)]) == 1
    assert "scan.json: exists" in capsys.readouterr().err and not target.exists()
    assert main(["convert", str(ct_series.folder), str(target), "--overwrite"]) == 0
    assert json.loads(sidecar.read_text())["Modality"] == "CT"
    # A file without modality converted over it: its sidecar goes with the old output.
    plain = save(Volume(np.zeros((1, 2, 2, 2), np.int16), np.eye(4)), tmp_path / "plain" / "x.nii.gz")
    assert main(["convert", str(plain), str(target), "--overwrite"]) == 0
    assert not sidecar.exists()
    assert medvol.load(target).meta["modality"] is None
    # A sidecar a killed convert left without its file is replaced without --overwrite.
    target.unlink()
    sidecar.write_text('{"Modality": "MR", "ConversionSoftware": "medvol"}')
    assert main(["convert", str(ct_series.folder), str(target)]) == 0
    assert json.loads(sidecar.read_text())["Modality"] == "CT"


def test_save_writes_a_sidecar_only_for_what_it_knows(tmp_path: Path) -> None:
    volume = Volume(np.zeros((1, 2, 2, 2), np.int16), np.eye(4), {"modality": "MR"})
    save(volume, tmp_path / "a.mha")
    assert json.loads((tmp_path / "a.json").read_text())["Modality"] == "MR"
    save(Volume(volume.array, volume.affine), tmp_path / "a.mha")  # nothing known: medvol's old one goes
    assert not (tmp_path / "a.json").exists()
    (tmp_path / "a.json").write_text('{"Modality": "MR", "Manufacturer": "X"}')  # another program's stays
    save(Volume(volume.array, volume.affine), tmp_path / "a.mha")
    assert (tmp_path / "a.json").exists()
    # A file that cannot be written leaves the sidecar as it was: absent, or another format's.
    sheared = np.eye(4)
    sheared[0, 2] = 0.5
    tilted = Volume(volume.array, sheared, {"modality": "CT"})
    with pytest.raises(medvol.MedvolError):
        save(tilted, tmp_path / "b.nrrd")
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "b.nrrd").exists()
    save(Volume(volume.array, sheared, {"modality": "MR"}), tmp_path / "b.nii.gz")
    with pytest.raises(medvol.MedvolError):
        save(tilted, tmp_path / "b.nrrd")  # NRRD cannot hold a sheared affine
    assert medvol.load(tmp_path / "b.nii.gz").meta["modality"] == "MR"
    # A folder where the sidecar belongs is named, not an unexpected error.
    (tmp_path / "c.json").mkdir()
    with pytest.raises(medvol.MedvolError, match="is a folder"):
        save(volume, tmp_path / "c.nii.gz")


def test_predict_reads_a_scans_sidecar_with_it_and_does_not_count_it_as_ignored(tmp_path: Path) -> None:
    from medvol.prediction import find_scans

    volume = Volume(np.zeros((1, 4, 4, 4), np.float32), np.eye(4), {"modality": "CT"})
    medvol.save(volume, tmp_path / "in" / "scan.nii.gz")
    assert (tmp_path / "in" / "scan.json").is_file()
    (tmp_path / "in" / "notes.txt").write_text("not a scan")
    found = find_scans(tmp_path / "in")
    assert [scan.relative for scan in found.scans] == ["scan.nii.gz"]
    assert found.ignored == 1  # notes.txt, not the sidecar
