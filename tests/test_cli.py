"""The ``medvol`` command line as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import medvol
from medvol.cli import main
from medvol.demo import sample, sample_ct_series


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medvol", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture()
def nifti_file(tmp_path: Path) -> Path:
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), np.diag([-1, 2, 3, 1])), path)
    return path


def test_help_is_fast_and_lists_verbs() -> None:
    start = time.perf_counter()
    result = run_cli("--help")
    assert result.returncode == 0
    for verb in ("info", "convert", "demo"):
        assert verb in result.stdout
    # Heavy libraries are imported inside verbs; --help must not pay for them.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, medvol.cli; print('torch' in sys.modules, 'SimpleITK' in sys.modules)",
        ],
        capture_output=True,
        text=True,
    )
    assert probe.stdout.split() == ["False", "False"]
    assert time.perf_counter() - start < 60


def test_info_json_has_geometry_keys(nifti_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(nifti_file), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shape"] == [3, 4, 5]
    assert summary["spacing"] == [1.0, 2.0, 3.0]
    assert summary["orientation"] == "LAS"
    assert summary["affine"][0] == [-1.0, 0.0, 0.0, 0.0]
    assert summary["intensity_range"] == [0, 59]
    assert summary["dtype"] == "int16"


def test_info_human_output(nifti_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(nifti_file)]) == 0
    out = capsys.readouterr().out
    assert "orientation        LAS" in out
    assert "spacing            [1.0, 2.0, 3.0]" in out


def test_convert_dicom_sample_to_nifti_and_refuse_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "ct.nii.gz"
    result = run_cli("convert", str(sample_ct_series()), str(target))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    volume = medvol.load(target)
    assert volume.shape == (512, 512, 20)
    np.testing.assert_allclose(volume.spacing, (0.9765625, 0.9765625, 2.0), atol=1e-6)
    again = run_cli("convert", str(sample_ct_series()), str(target))
    assert again.returncode == 1
    assert "--overwrite" in again.stderr


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.nii.gz", None, "no such file or folder"),
        ("empty.nii.gz", b"", "empty file"),
        ("notes.txt", b"hello", "unknown format"),
        ("bad.nii.gz", b"\x1f\x8b garbage", "not a readable NIfTI"),
        ("bad.nrrd", b"NRRD0004\ntype: nonsense\n", "SimpleITK cannot read it"),
    ],
)
def test_errors_are_one_clear_line(tmp_path: Path, name: str, content: bytes | None, expected: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    result = run_cli("info", str(path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("before_verb", [False, True])
def test_debug_shows_traceback(tmp_path: Path, before_verb: bool) -> None:
    arguments = ["info", str(tmp_path / "missing.nii")]
    result = run_cli(*(["--debug", *arguments] if before_verb else [*arguments, "--debug"]))
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_closed_output_pipe_is_not_an_error(nifti_file: Path) -> None:
    command = [sys.executable, "-m", "medvol", "info", str(nifti_file), "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # like `| head` exiting before medvol writes
    assert process.wait(timeout=120) == 0
    assert "BrokenPipeError" not in process.stderr.read().decode()


def test_demo_runs_end_to_end_on_bundled_samples(tmp_path: Path) -> None:
    """``medvol demo --quick``: every step of the main job on the bundled data, one epoch per model."""
    result = run_cli("demo", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "reloads with the same geometry and voxels" in result.stdout
    assert (tmp_path / "sample_ct.nii.gz").is_file()
    holdout = sorted(p.name for p in (sample("hippocampus") / "holdout" / "images").iterdir())
    masks = sorted(p.name for p in (tmp_path / "predictions").rglob("*.nii.gz"))
    assert len(masks) == len(holdout) == 4
    seg_run, cls_run = tmp_path / "runs" / "hippocampus-unet", tmp_path / "runs" / "adrenal-resnet10"
    seg_summary = json.loads((seg_run / "evaluation-hippocampus-holdout" / "summary.json").read_text())
    assert seg_summary["n_cases"] == 4
    cls_summary = json.loads((cls_run / "evaluation-test" / "summary.json").read_text())
    assert cls_summary["n_cases"] == 298
    for run in (seg_run, cls_run):
        assert (run / "report" / "report.html").is_file()
    assert "Warning" not in result.stderr  # no warnings about the bundled files


def test_synthesize_writes_variants_and_resumes(shared_data: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    for case in ("hippocampus_001", "hippocampus_004"):
        for kind in ("images", "labels"):
            (source / kind).mkdir(parents=True, exist_ok=True)
            data = (shared_data / "msd-hippocampus" / kind / f"{case}.nii.gz").read_bytes()
            (source / kind / f"{case}.nii.gz").write_bytes(data)
    out = tmp_path / "out"
    assert main(["synthesize", str(source), "--per-case", "2", "--out", str(out)]) == 0
    assert len(list((out / "images").glob("*.nii.gz"))) == 4
    variant = medvol.load(next((out / "labels").glob("hippocampus_001_*.nii.gz")))
    original = medvol.load(source / "labels" / "hippocampus_001.nii.gz")
    np.testing.assert_array_equal(variant.affine, original.affine)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    assert main(["synthesize", str(source), "--per-case", "2", "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == before
