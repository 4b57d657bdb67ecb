"""``medvol predict``: batch inference over messy folders, resumable and shardable.

Two tiny runs are trained once per test session (``tests/conftest.py``: a
U-Net on 4 bundled hippocampus cases at 4 mm, a ResNet on 48 bundled
AdrenalMNIST3D cases); the checks are what a user relies on: outputs exactly
for the valid scans on each scan's own grid, failures in ``errors.csv`` with
exit code 1, reruns that redo nothing, resumption after an interruption,
shards that partition the inputs, and no patient identifiers in any file
name or CSV.
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

import medvol
from medvol import demo
from medvol.cli import main
from medvol.data.cases import discover_dicom
from medvol.errors import MedvolError
from medvol.io.dicom_seg import load_dicom_seg
from medvol.prediction import (
    Options,
    effective_shard,
    find_scans,
    parse_shard,
    predict,
    take_shard,
)
from tests.conftest import HOLDOUT_CASE
from tests.dicom_factory import IDENTIFIERS, Geometry, write_series
from tests.geometry_oracle import index_map

CT_SERIES = "dicom/ct-jpeg2000-series"
CT_REFERENCE_SEGMENTATION = "dicom/ct-jpeg2000-series-reference/segmentation.nii.gz"


def mixed_folder(root: Path, shared_data: Path) -> Path:
    """Two NIfTI scans (one nested), a synthetic DICOM series with fake patient
    identifiers, and the bad: a corrupt .nii.gz, a truncated DICOM file (which
    also stops the two good slices beside it), a text file named .dcm, plus an
    ignored text file."""
    source = shared_data / "msd-hippocampus/images"
    (root / "nested/deeper").mkdir(parents=True)
    shutil.copy(source / "hippocampus_007.nii.gz", root / "a.nii.gz")
    shutil.copy(source / "hippocampus_008.nii.gz", root / "nested/deeper/b.nii.gz")
    write_series(root / "patient/series", Geometry(rows=24, columns=20, slices=10, pixel_spacing=(2.0, 2.0)))
    broken = write_series(root / "bad-dicom", Geometry(rows=8, columns=8, slices=3)).slices[0].path
    data = broken.read_bytes()
    (root / "bad-dicom/truncated.dcm").write_bytes(data[: len(data) - 40])
    broken.unlink()
    (root / "corrupt.nii.gz").write_bytes(b"\x1f\x8b this is not gzip data" * 10)
    (root / "fake.dcm").write_text("not a DICOM file")
    (root / "notes.txt").write_text("a note, not a scan")
    return root


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def files_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def mtimes(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


def age(paths: list[Path]) -> None:
    """Set mtimes an hour back, so a rewrite shows even on coarse file-system clocks."""
    for path in paths:
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - 3600 * 10**9))


def assert_no_identifiers(out: Path) -> None:
    for path in files_below(out):
        for identifier in IDENTIFIERS:
            assert identifier not in str(path.relative_to(out)), path
            if path.suffix in (".csv", ".json"):
                assert identifier not in path.read_text(), (identifier, path)


# ------------------------------------------------------------------- segmentation


def test_mixed_folder_outputs_errors_rerun_and_overwrite(
    segmenter: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    in_dir = mixed_folder(tmp_path / "in", shared_data)
    out = tmp_path / "out"
    assert main(["predict", str(segmenter), str(in_dir), str(out)]) == 1
    printed = capsys.readouterr().out
    assert "3 predicted" in printed and "4 failed" in printed

    # The series is named by the id `medvol index` gives it.
    (series_id,) = [c.case_id for c in discover_dicom(in_dir)[0] if c.images[0].name == "series"]
    expected = {
        "a.seg.nii.gz": in_dir / "a.nii.gz",
        "nested/deeper/b.seg.nii.gz": in_dir / "nested/deeper/b.nii.gz",
        f"patient/series/{series_id}.seg.nii.gz": in_dir / "patient/series",
    }
    written = {p.relative_to(out).as_posix() for p in files_below(out)}
    assert written == {*expected, "errors.csv", "predict.json"}
    for name, source in expected.items():
        label, scan = medvol.load(out / name), medvol.load(source)
        assert label.shape == scan.shape and label.array.dtype == np.uint8
        np.testing.assert_allclose(label.affine, scan.affine, atol=1e-4)
        assert set(np.unique(label.array)) <= {0, 1, 2}

    errors = {row["input"]: row for row in rows(out / "errors.csv")}
    assert set(errors) == {"corrupt.nii.gz", "fake.dcm", "bad-dicom/truncated.dcm", "bad-dicom"}
    assert "NIfTI" in errors["corrupt.nii.gz"]["reason"]
    assert "not a DICOM file" in errors["fake.dcm"]["reason"]
    assert "truncated" in errors["bad-dicom/truncated.dcm"]["reason"]
    # The good slices beside it are not predicted: the broken file may be one of their series.
    assert "truncated.dcm" in errors["bad-dicom"]["reason"]
    assert errors["bad-dicom"]["case_id"].startswith("dicom-")
    manifest = json.loads((out / "predict.json").read_text())
    assert manifest["status"] == "finished"
    assert manifest["settings"]["checkpoint"] in ("best", "last")
    assert manifest["medvol_version"] == medvol.__version__
    assert manifest["counts"] == {
        "scans": 7,
        "predicted": 3,
        "already_done": 0,
        "failed": 4,
        "ignored_files": 1,
        "left_to_other_processes": 0,
    }
    assert manifest["outputs"] == {  # each input with its outputs; failures are in errors.csv
        source.relative_to(in_dir).as_posix(): [name] for name, source in expected.items()
    }
    assert_no_identifiers(out)

    outputs = [out / name for name in expected]
    age(outputs)
    before = mtimes(outputs)
    assert main(["predict", str(segmenter), str(in_dir), str(out)]) == 1  # the bad files are still bad
    assert "0 predicted, 3 already done" in capsys.readouterr().out
    assert mtimes(outputs) == before

    assert main(["predict", str(segmenter), str(in_dir), str(out), "--overwrite"]) == 1
    assert all(path.stat().st_mtime_ns > before[path] for path in outputs)


def test_ct_series_mask_on_the_reference_grid(segmenter: Path, shared_data: Path, tmp_path: Path) -> None:
    """The mask of the real CT series lies on the grid of dcm2niix's conversion (same voxels)."""
    dicom_seg = importlib.util.find_spec("highdicom") is not None
    options = Options(dicom_seg=dicom_seg, largest_component=True)
    outcome = predict(segmenter, shared_data / CT_SERIES, tmp_path / "out", options)
    assert outcome.exit_code == 0 and outcome.predicted == 1
    (label_path,) = (tmp_path / "out").glob("*.seg.nii.gz")
    label = nib.load(label_path)
    reference = nib.load(shared_data / CT_REFERENCE_SEGMENTATION)
    assert label.shape == reference.shape == (512, 512, 20)
    index_map(label.affine, reference.affine, tolerance_mm=1e-3)  # every voxel centre shared
    canonical, canonical_reference = nib.as_closest_canonical(label), nib.as_closest_canonical(reference)
    np.testing.assert_allclose(canonical.affine, canonical_reference.affine, atol=1e-3)
    np.testing.assert_allclose(label.affine, medvol.load(shared_data / CT_SERIES).affine, atol=1e-3)
    if dicom_seg:
        check_dicom_seg(label_path.with_name(label_path.name.replace(".nii.gz", ".dcm")), label, shared_data)


def check_dicom_seg(path: Path, label: Any, shared_data: Path) -> None:
    """Each SEG frame holds the label map's slice of the source image it references."""
    import highdicom as hd
    import pydicom

    from medvol.io.dicom import scan_folder, stack_geometry

    seg = hd.seg.segread(path)
    (series,), _ = scan_folder(shared_data / CT_SERIES)
    ordered, _, _ = stack_geometry(series.headers)
    uids = [
        pydicom.dcmread(h.path, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID for h in ordered
    ]
    array = np.asarray(label.dataobj)
    if not array.any():
        return
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        combine_segments=True,
        skip_overlap_checks=True,
        ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True,
    )
    np.testing.assert_array_equal(pixels, array.transpose(2, 1, 0))
    # Read back by medvol as the series' label (placed by geometry, not by references): the same map.
    read_back = load_dicom_seg(path, medvol.load(shared_data / CT_SERIES))
    np.testing.assert_array_equal(read_back.array[0], array)


def test_resume_redoes_only_what_is_missing(segmenter: Path, shared_data: Path, tmp_path: Path) -> None:
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for case in ("007", "008", "011", "014", "015"):
        shutil.copy(shared_data / f"msd-hippocampus/images/hippocampus_{case}.nii.gz", in_dir)
    out = tmp_path / "out"
    # An interrupted run: only part of the scans got done (here: shard 1 of 2).
    assert predict(segmenter, in_dir, out, Options(shard=(1, 2))).predicted == 2
    first = files_below(out)
    age(first)
    before = mtimes(first)
    outcome = predict(segmenter, in_dir, out)
    assert (outcome.predicted, outcome.skipped) == (3, 2)
    assert mtimes(first) == before
    outputs = sorted(out.glob("*.seg.nii.gz"))
    assert len(outputs) == 5
    age(outputs)
    before = mtimes(outputs)
    outputs[2].unlink()
    outcome = predict(segmenter, in_dir, out)
    assert (outcome.predicted, outcome.skipped) == (1, 4)
    assert [p for p in outputs if p.stat().st_mtime_ns != before[p]] == [outputs[2]]


def test_shards_partition_the_inputs(
    segmenter: Path, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_dir = mixed_folder(tmp_path / "in", shared_data)
    whole = predict(segmenter, in_dir, tmp_path / "whole")
    done = {p.relative_to(tmp_path / "whole").as_posix() for p in (tmp_path / "whole").rglob("*.seg.nii.gz")}
    failed = {row["input"] for row in rows(tmp_path / "whole/errors.csv")}

    sharded = tmp_path / "sharded"
    seen: list[str] = []
    seen_failed: list[str] = []
    # Shard 0 of 2 split further by two torchrun ranks, and shard 1 of 2 as one process.
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        outcome = predict(segmenter, in_dir, sharded, Options(shard=(0, 2)))
        seen_failed += [row["input"] for row in rows(sharded / f"errors.shard-{2 * rank}-of-4.csv")]
        assert outcome.scans == len(take_shard(range(whole.scans), 2 * rank, 4))
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    predict(segmenter, in_dir, sharded, Options(shard=(1, 2)))
    seen_failed += [row["input"] for row in rows(sharded / "errors.shard-1-of-2.csv")]
    seen = [p.relative_to(sharded).as_posix() for p in sharded.rglob("*.seg.nii.gz")]
    assert sorted(seen) == sorted(done) and len(seen) == len(set(seen))
    assert sorted(seen_failed) == sorted(failed) and len(seen_failed) == len(set(seen_failed))
    assert not (sharded / "errors.csv").exists() and not (sharded / "predict.json").exists()
    assert {p.name for p in sharded.glob("predict*.json")} == {
        "predict.shard-0-of-4.json",
        "predict.shard-2-of-4.json",
        "predict.shard-1-of-2.json",
    }


def test_probabilities_and_refusal_of_changed_settings(
    segmenter: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    shutil.copy(shared_data / "msd-hippocampus/images/hippocampus_007.nii.gz", in_dir)
    out = tmp_path / "out"
    assert main(["predict", str(segmenter), str(in_dir), str(out), "--probabilities"]) == 0
    scan = medvol.load(in_dir / "hippocampus_007.nii.gz")
    label, probabilities = (
        medvol.load(out / "hippocampus_007.seg.nii.gz"),
        medvol.load(out / "hippocampus_007.prob.nii.gz"),
    )
    assert probabilities.array.shape == (3, *scan.shape) and probabilities.array.dtype == np.float32
    np.testing.assert_allclose(probabilities.affine, scan.affine, atol=1e-4)
    np.testing.assert_allclose(probabilities.array.sum(axis=0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(probabilities.array.argmax(axis=0), label.array[0])
    assert main(["predict", str(segmenter), str(in_dir), str(out), "--tta"]) == 1
    error = capsys.readouterr().err
    assert "predict.json" in error and "flip_tta" in error and "--overwrite" in error
    assert main(["predict", str(segmenter), str(in_dir), str(out), "--tta", "--overwrite"]) == 0


def test_flip_tta_is_refused_for_a_run_trained_without_flips(
    segmenter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Mirroring anterior/posterior would swap the labels' meaning: only trained flips are used."""
    unflipped = tmp_path / "unflipped"
    shutil.copytree(segmenter, unflipped)
    config = yaml.safe_load((unflipped / "config.yaml").read_text())
    config["augment"]["flip_axes"] = []
    (unflipped / "config.yaml").write_text(yaml.safe_dump(config))
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    shutil.copy(demo.sample("hippocampus/holdout/images") / HOLDOUT_CASE, in_dir)
    assert main(["predict", str(unflipped), str(in_dir), str(tmp_path / "out"), "--flip-tta"]) == 1
    error = capsys.readouterr().err
    assert str(unflipped) in error and "trained without flips" in error and "augment.flip_axes" in error
    assert not (tmp_path / "out").exists()
    assert main(["evaluate", str(unflipped), "--flip-tta", "--out", str(tmp_path / "scores")]) == 1
    assert "trained without flips" in capsys.readouterr().err
    assert not (tmp_path / "scores").exists()
    assert main(["evaluate", str(segmenter), "--flip-tta", "--out", str(tmp_path / "flipped")]) == 0
    summary = json.loads((tmp_path / "flipped" / "summary.json").read_text())
    assert summary["tta"] is True and summary["tta_flip_axes"] == [0]


def test_a_series_of_several_echoes_is_predicted_from_the_chosen_volume(
    segmenter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.dicom_multivolume_factory import VolumeSpec, write_mr_volumes

    in_dir = tmp_path / "in"
    specs = [VolumeSpec(echo_number=e + 1, echo_time=5.0 + 5 * e) for e in range(2)]
    write_mr_volumes(
        in_dir / "echoes", Geometry(rows=24, columns=20, slices=10, pixel_spacing=(2.0, 2.0)), specs
    )
    unchosen = tmp_path / "unchosen"
    assert main(["predict", str(segmenter), str(in_dir), str(unchosen)]) == 1
    (failure,) = rows(unchosen / "errors.csv")
    assert "holds 2 volumes" in failure["reason"] and "--volume" in failure["reason"]

    out = tmp_path / "out"
    assert main(["predict", str(segmenter), str(in_dir), str(out), "--volume", "2"]) == 0
    (mask,) = out.rglob("*.seg.nii.gz")
    echo = medvol.load(in_dir / "echoes", volume=2)
    predicted = medvol.load(mask)
    assert predicted.shape == echo.shape
    np.testing.assert_allclose(predicted.affine, echo.affine, atol=1e-4)
    assert json.loads((out / "predict.json").read_text())["settings"]["volume"] == "2"
    capsys.readouterr()
    assert main(["predict", str(segmenter), str(in_dir), str(out), "--volume", "1"]) == 1
    assert "volume '2' → '1'" in capsys.readouterr().err

    both = tmp_path / "both"  # a one-channel model given two echoes as channels: the scan fails, named
    assert main(["predict", str(segmenter), str(in_dir), str(both), "--volume", "all"]) == 1
    (failure,) = rows(both / "errors.csv")
    assert "channel" in failure["reason"], failure


# ----------------------------------------------------------------- classification


def test_classifier_writes_predictions_without_identifiers(
    classifier: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medvol.engine.inference import classify, load_trained, prepare_input

    in_dir = tmp_path / "in"
    images = np.load(shared_data / "adrenalmnist3d/adrenalmnist3d.npz")["test_images"][:3]
    for index, image in enumerate(images):
        medvol.save(medvol.Volume(image[np.newaxis], np.eye(4)), in_dir / "adrenal" / f"case{index}.nii.gz")
    shutil.copy(shared_data / "msd-hippocampus/images/hippocampus_007.nii.gz", in_dir / "hippo.nii.gz")
    write_series(in_dir / "dicom", Geometry(rows=24, columns=20, slices=10))
    (in_dir / "broken.nrrd").write_text("NRRD0004\nnonsense\n")
    out = tmp_path / "out"
    assert main(["predict", str(classifier), str(in_dir), str(out)]) == 1
    capsys.readouterr()

    table = rows(out / "predictions.csv")
    assert list(table[0]) == ["case_id", "input", "probability_0", "probability_1", "predicted_class"]
    assert [row["input"] for row in table] == [
        "adrenal/case0.nii.gz",
        "adrenal/case1.nii.gz",
        "adrenal/case2.nii.gz",
    ]
    probabilities = np.array([[float(row["probability_0"]), float(row["probability_1"])] for row in table])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert [int(row["predicted_class"]) for row in table] == probabilities.argmax(axis=1).tolist()
    # A 28³ uint8 scan goes in exactly as in training (uint8 / 255)...
    trained = load_trained(classifier)
    scaled = images[:, np.newaxis].astype(np.float32) / 255
    for index in range(3):
        scan = medvol.load(in_dir / f"adrenal/case{index}.nii.gz")
        np.testing.assert_array_equal(prepare_input(trained, scan).array, scaled[index])
    np.testing.assert_allclose(probabilities, classify(trained, scaled), atol=1e-3)
    # ...and a scan outside MedMNIST's 0-255 range (an MR volume, a CT series) is refused, saying why.
    errors = {row["input"]: row for row in rows(out / "errors.csv")}
    assert sorted(errors) == ["broken.nrrd", "dicom", "hippo.nii.gz"]
    assert "0-255 range" in errors["hippo.nii.gz"]["reason"] and "0-255" in errors["dicom"]["reason"]
    assert errors["dicom"]["case_id"].startswith("dicom-")
    assert_no_identifiers(out)

    (out / "predictions.csv").write_text("".join((out / "predictions.csv").read_text().splitlines(True)[:3]))
    assert main(["predict", str(classifier), str(in_dir), str(out)]) == 1
    assert "1 predicted, 2 already done" in capsys.readouterr().out
    assert len(rows(out / "predictions.csv")) == 3


def test_segmentation_flags_are_refused_for_a_classifier(
    classifier: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in").mkdir()
    medvol.save(medvol.Volume(np.zeros((1, 4, 4, 4), np.uint8), np.eye(4)), tmp_path / "in/x.nii.gz")
    assert main(["predict", str(classifier), str(tmp_path / "in"), str(tmp_path / "out"), "--tta"]) == 1
    assert "--flip-tta apply to segmentation runs" in capsys.readouterr().err


# ------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize("text", ["2/2", "a/b", "1", "-1/2", "0/0", "1/2/3"])
def test_bad_shard_strings(text: str) -> None:
    with pytest.raises(MedvolError, match="--shard"):
        parse_shard(text)


def test_shards_and_ranks_partition_exactly() -> None:
    items = list(range(23))
    assert parse_shard(" 1 / 3 ") == (1, 3) and parse_shard(None) == (0, 1)
    for count in (1, 2, 5):
        parts = [take_shard(items, index, count) for index in range(count)]
        assert sorted(itertools.chain(*parts)) == items
        for index in range(count):
            ranks = [effective_shard((index, count), {"WORLD_SIZE": "3", "RANK": str(r)}) for r in range(3)]
            split = [take_shard(items, i, n) for i, n in ranks]
            assert sorted(itertools.chain(*split)) == parts[index]
    with pytest.raises(MedvolError, match="RANK=2"):
        effective_shard((0, 1), {"WORLD_SIZE": "2", "RANK": "2"})


def test_bad_folders_are_named(segmenter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    medvol.save(medvol.Volume(np.zeros((1, 4, 4, 4), np.uint8), np.eye(4)), scans / "x.nii.gz")
    no_checkpoint = tmp_path / "no-checkpoint"
    no_checkpoint.mkdir()
    shutil.copy(segmenter / "config.yaml", no_checkpoint)
    (tmp_path / "empty").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text/readme.txt").write_text("no scans here")
    cases = [
        ([str(tmp_path / "missing-run"), str(scans)], "missing-run: run folder or model package not found"),
        ([str(no_checkpoint), str(scans)], "no-checkpoint: no checkpoint to load"),
        ([str(segmenter), str(tmp_path / "nope")], "nope: input folder not found"),
        ([str(segmenter), str(tmp_path / "empty")], "empty: empty input folder"),
        ([str(segmenter), str(tmp_path / "text")], "text: no scans found"),
        ([str(segmenter), str(scans), "--shard", "3/2"], "--shard '3/2'"),
    ]
    for arguments, message in cases:
        assert main(["predict", *arguments[:2], str(tmp_path / "out"), *arguments[2:]]) == 1
        assert message in capsys.readouterr().err, message
    assert main(["predict", str(segmenter), str(scans), str(scans)]) == 1
    assert "must differ from the input folder" in capsys.readouterr().err


def test_missing_highdicom_is_explained(
    segmenter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        "medvol.prediction.predictor.importlib.util.find_spec",
        lambda name: None if name == "highdicom" else real(name),
    )
    (tmp_path / "in").mkdir()
    assert main(["predict", str(segmenter), str(tmp_path / "in"), str(tmp_path / "out"), "--dicom-seg"]) == 1
    assert "pip install 'medvol[dicom-seg]'" in capsys.readouterr().err


def test_output_folder_inside_the_input_is_not_read_as_input(segmenter: Path, tmp_path: Path) -> None:
    scan = np.random.default_rng(0).normal(size=(1, 6, 6, 6)).astype(np.float32)
    medvol.save(medvol.Volume(scan, np.eye(4)), tmp_path / "x.nii.gz")
    threads = torch.get_num_threads()
    options = Options(torch_threads=1)
    assert predict(segmenter, tmp_path, tmp_path / "predictions", options).predicted == 1
    assert torch.get_num_threads() == threads  # changed while predicting only
    manifest = json.loads((tmp_path / "predictions/predict.json").read_text())
    assert manifest["options"]["torch_threads"] == 1
    assert [s.relative for s in find_scans(tmp_path, tmp_path / "predictions").scans] == ["x.nii.gz"]
    assert predict(segmenter, tmp_path, tmp_path / "predictions").skipped == 1


# ------------------------------------------------------------- shared output folders


def hippocampus_folder(shared_data: Path, folder: Path, cases: tuple[str, ...]) -> Path:
    folder.mkdir(parents=True)
    for case in cases:
        shutil.copy(shared_data / f"msd-hippocampus/images/hippocampus_{case}.nii.gz", folder)
    return folder


def ended_process_id() -> int:
    """The id of a process that has exited (what a killed run leaves in its files)."""
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(process.stdout)


def test_a_killed_run_is_cleaned_up_and_named_by_the_next(
    segmenter: Path, shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from medvol.io.atomic import host_tag

    in_dir = hippocampus_folder(shared_data, tmp_path / "in", ("007", "008"))
    out = tmp_path / "out"
    assert predict(segmenter, in_dir, out, Options(probabilities=True)).predicted == 2
    # What `kill -9` in the middle of a second run leaves: its temporaries, its claim, "running".
    (out / "hippocampus_008.seg.nii.gz").unlink()
    dead, host = ended_process_id(), host_tag()
    leftovers = [
        out / f".hippocampus_008.prob.tmp-{host}-{dead}-0123abcd.nii.gz",
        out / f".hippocampus_008.seg.tmp-{host}-{dead}-4567cdef.nii.gz",
        out / ".hippocampus_008.claim",
    ]
    for path in leftovers[:2]:
        path.write_bytes(b"half-written")
    leftovers[2].write_text(json.dumps({"host": host, "pid": dead, "token": "x", "since": 0}))
    old = out / ".hippocampus_007.seg.tmp-89abcdef.nii.gz"  # an earlier medvol's name: no pid, an hour old
    old.write_bytes(b"half-written")
    age([old])
    live = out / f".other.tmp-{host}-{os.getpid()}-0000ffff.nii.gz"  # being written by a live process
    not_ours = out / ".notes.tmp-by-the-user.txt"
    for path in (live, not_ours):
        path.write_bytes(b"keep me")
    manifest = json.loads((out / "predict.json").read_text())
    manifest.update(status="running", process={"host": host, "pid": dead})
    (out / "predict.json").write_text(json.dumps(manifest))

    outcome = predict(segmenter, in_dir, out, Options(probabilities=True))

    assert (outcome.predicted, outcome.skipped) == (1, 1)
    assert not [p for p in (*leftovers, old) if p.exists()]
    assert live.exists() and not_ours.exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("previous run into this folder" in w and "killed before it finished" in w for w in warnings)
    assert any("removed 3 unfinished temporary file(s)" in w for w in warnings), warnings
    manifest = json.loads((out / "predict.json").read_text())
    assert manifest["status"] == "finished" and manifest["removed_temporaries"] == 3
    assert "killed" in manifest["previous_run"]


def test_sigterm_ends_a_run_as_interrupted(
    segmenter: Path, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduler's SIGTERM unwinds the run: predict.json says "interrupted", exit status 143."""
    import signal

    def terminated_midway(*args: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler interrupts this sleep
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr("medvol.prediction.predictor.segment_scans", terminated_midway)
    in_dir = hippocampus_folder(shared_data, tmp_path / "in", ("007",))
    started = time.monotonic()
    assert main(["predict", str(segmenter), str(in_dir), str(tmp_path / "out")]) == 143
    assert time.monotonic() - started < 25
    assert json.loads((tmp_path / "out" / "predict.json").read_text())["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the CLI's only while it runs


def predict_twice_at_once(
    run_dir: Path, in_dir: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> list[Any]:
    """Two ``predict`` workers (threads) on one output folder, loading slowly so both are busy at once."""
    from medvol.prediction.predictor import Predictor

    load = Predictor.load

    def slow_load(self: Predictor, scan: Any) -> Any:
        time.sleep(0.3)  # both workers are still busy when the other starts
        return load(self, scan)

    monkeypatch.setattr(Predictor, "load", slow_load)
    outcomes: list[Any] = []
    workers = [
        threading.Thread(target=lambda: outcomes.append(predict(run_dir, in_dir, out, Options(workers=1))))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(outcomes) == 2
    return outcomes


def test_two_processes_share_one_output_folder(
    segmenter: Path, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers on one folder (no --shard): every scan is predicted exactly once."""
    cases = ("007", "008", "011", "014", "015", "017")
    in_dir = hippocampus_folder(shared_data, tmp_path / "in", cases)
    out = tmp_path / "out"
    outcomes = predict_twice_at_once(segmenter, in_dir, out, monkeypatch)
    assert sum(o.predicted for o in outcomes) == len(cases)
    assert all(o.predicted for o in outcomes)  # the work was shared, not done by one
    assert len(list(out.glob("*.seg.nii.gz"))) == len(cases)
    assert not list(out.glob(".*"))  # no claim or temporary left behind
    assert rows(out / "errors.csv") == []


@pytest.mark.skipif(importlib.util.find_spec("highdicom") is None, reason="needs medvol[dicom-seg]")
def test_dicom_seg_warnings_reach_stderr_without_identifiers(segmenter: Path, tmp_path: Path) -> None:
    """highdicom quotes a patient name not in DICOM's family^given form; medvol withholds it."""
    import pydicom

    from tests.dicom_factory import PATIENT_NAME

    truth = write_series(
        tmp_path / "in/series", Geometry(rows=24, columns=20, slices=10, pixel_spacing=(2.0, 2.0))
    )
    for item in truth.slices:
        dataset = pydicom.dcmread(item.path)
        dataset.PatientName = PATIENT_NAME.replace("^", " ")  # "Doe Jane": one component
        dataset.save_as(item.path)
    out = tmp_path / "out"
    # A process of its own: stderr as a user sees it (Python's warnings included, which pytest would catch).
    command = [sys.executable, "-m", "medvol", "predict", str(segmenter), str(tmp_path / "in"), str(out)]
    printed = subprocess.run(
        [*command, "--dicom-seg"], capture_output=True, text=True, cwd=Path(medvol.__file__).parents[1]
    )
    assert printed.returncode == 0, printed.stderr
    for identifier in IDENTIFIERS:
        assert identifier not in printed.stderr and identifier not in printed.stdout, identifier
    assert "DICOM SEG: The string" in printed.stderr and "person name" in printed.stderr  # the gist is kept
    assert len(list(out.rglob("*.seg.dcm"))) == 1
    assert_no_identifiers(out)


def test_two_classifier_processes_fill_one_table(
    classifier: Path, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers on one folder: predictions.csv gets every row once; errors.csv keeps both failures."""

    in_dir = tmp_path / "in"
    images = np.load(shared_data / "adrenalmnist3d/adrenalmnist3d.npz")["test_images"][:8]
    for index, image in enumerate(images):
        medvol.save(medvol.Volume(image[np.newaxis], np.eye(4)), in_dir / f"case{index}.nii.gz")
    for name in ("broken-a.nrrd", "broken-b.nrrd"):
        (in_dir / name).write_text("NRRD0004\nnonsense\n")
    out = tmp_path / "out"
    outcomes = predict_twice_at_once(classifier, in_dir, out, monkeypatch)
    assert sum(o.predicted for o in outcomes) == 8 and all(o.predicted for o in outcomes)
    assert [row["case_id"] for row in rows(out / "predictions.csv")] == [f"case{i}" for i in range(8)]
    assert sorted(row["input"] for row in rows(out / "errors.csv")) == ["broken-a.nrrd", "broken-b.nrrd"]
    assert not list(out.glob(".*"))
