"""What a researcher hands medvol on a first try: unsafe checkpoints, links, leftovers of killed runs."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import medvol
from medvol.cli import main
from medvol.engine.checkpoint import load_checkpoint
from medvol.errors import MedvolError, UnreadableFileError
from medvol.prediction import find_scans


def test_a_checkpoint_with_code_is_refused_without_advice_to_unpickle(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"model": argparse.Namespace(a=1)}, path)  # any class outside torch's allow-list
    with pytest.raises(MedvolError) as raised:
        load_checkpoint(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: refused")
    assert "argparse.Namespace" in message
    assert "weights_only" not in message and "will likely succeed" not in message
    assert "\n" not in message


def test_a_corrupt_checkpoint_is_named_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip archive")
    with pytest.raises(MedvolError) as raised:
        load_checkpoint(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert "weights_only" not in str(raised.value) and "\n" not in str(raised.value)


# ------------------------------------------------------------- symbolic links


def links(folder: Path) -> Path:
    """A folder with a self-referencing link, a broken link and one real scan."""
    folder.mkdir(parents=True)
    (folder / "loop.nii.gz").symlink_to("loop.nii.gz")
    (folder / "gone.nii.gz").symlink_to("moved-away.nii.gz")
    medvol.save(medvol.Volume(np.zeros((1, 4, 4, 4), np.int16), np.eye(4)), folder / "real.nii.gz")
    return folder


def test_a_looping_link_is_named_as_such_by_load_info_and_convert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = links(tmp_path / "in")
    with pytest.raises(UnreadableFileError, match="loop of links"):
        medvol.load(folder / "loop.nii.gz")
    with pytest.raises(UnreadableFileError, match=r"broken symbolic link: its target moved-away\.nii\.gz"):
        medvol.load(folder / "gone.nii.gz")
    assert main(["info", str(folder / "loop.nii.gz")]) == 1
    assert main(["convert", str(folder / "loop.nii.gz"), str(tmp_path / "out.nii.gz")]) == 1
    # An output below a looping link: refused with the reason, not an unexpected error.
    assert main(["convert", str(folder / "real.nii.gz"), str(folder / "loop.nii.gz" / "out.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert "unexpected" not in err
    assert err.count("medvol: error:") == 3 and err.count("loop of links") == 3, err


def test_predict_lists_links_that_lead_nowhere_as_failures(tmp_path: Path) -> None:
    found = find_scans(links(tmp_path / "in"))
    assert [scan.relative for scan in found.scans] == ["real.nii.gz"]
    reasons = {failure.relative: failure.reason for failure in found.failures}
    assert set(reasons) == {"loop.nii.gz", "gone.nii.gz"}
    assert "loop of links" in reasons["loop.nii.gz"]
    assert "broken symbolic link" in reasons["gone.nii.gz"]


def test_running_out_of_memory_has_a_reason_in_errors_csv(tmp_path: Path) -> None:
    from medvol.prediction import Options, Predictor, Scan

    predictor = Predictor(tmp_path / "run", tmp_path / "in", tmp_path / "out", Options())
    scan = Scan("a", "a.nii.gz", "a", tmp_path / "in/a.nii.gz")
    assert "not enough memory" in predictor.reason(scan, MemoryError())


# ------------------------------------------------------------- claims and leftovers


def ended_process_id() -> int:
    """The id of a process that has exited (what a killed run leaves in its files)."""
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(process.stdout)


def write_claim(path: Path, host: str, pid: int, age_seconds: float = 0.0) -> None:
    path.write_text(json.dumps({"host": host, "pid": pid, "token": "t", "since": 0}))
    moment = time.time() - age_seconds
    os.utime(path, (moment, moment))


def test_claims_are_exclusive_and_stale_ones_are_taken_over(tmp_path: Path) -> None:
    from medvol.io.atomic import host_tag
    from medvol.prediction.claims import Claims, claim_path

    first, second = Claims(), Claims()
    path = claim_path(tmp_path / "a" / "scan")
    assert path == tmp_path / "a" / ".scan.claim"
    assert first.take(path) and not second.take(path)
    first.release(path)
    assert not path.exists() and second.take(path)
    second.release(path)
    # A process of this machine that ended: its claim is taken over at once.
    write_claim(path, host_tag(), ended_process_id())
    assert first.take(path)
    first.release(path)
    # Another machine's claim: alive while touched, stale after CLAIM_STALE_SECONDS.
    write_claim(path, "f00f00", 1, age_seconds=10)
    assert not first.take(path)
    write_claim(path, "f00f00", 1, age_seconds=3600)
    assert first.take(path)
    # A live process of this machine (this one): never taken over, however old.
    other = claim_path(tmp_path / "b")
    write_claim(other, host_tag(), os.getpid(), age_seconds=3600)
    assert not second.take(other)


def test_sweep_removes_only_medvol_leftovers_of_ended_processes(tmp_path: Path) -> None:
    from medvol.io.atomic import atomic_path, host_tag
    from medvol.prediction.claims import sweep

    dead, host = ended_process_id(), host_tag()
    (tmp_path / "sub").mkdir()
    stale = [
        tmp_path / f".x.seg.tmp-{host}-{dead}-0123abcd.nii.gz",
        tmp_path / "sub" / f".y.tmp-{host}-{dead}-0123abcd.csv",
    ]
    kept = [
        tmp_path / f".z.tmp-{host}-{os.getpid()}-0123abcd.nii.gz",  # this live process
        tmp_path / ".z.tmp-0123abcd.nii.gz",  # no owner recorded, recent
        tmp_path / ".notes.tmp-0123abcdX",  # not medvol's pattern
        tmp_path / "x.seg.nii.gz",
    ]
    for path in stale + kept:
        path.write_bytes(b"")
    with atomic_path(tmp_path / "out.nii.gz") as temporary:
        temporary.write_bytes(b"being written")
        swept = sweep(tmp_path)
        assert temporary.exists()  # this process is writing it
    assert sorted(swept.temporaries) == sorted(stale)
    assert all(path.exists() for path in kept)
    assert (tmp_path / "out.nii.gz").read_bytes() == b"being written"


def test_a_killed_convert_leaves_nothing_the_next_one_keeps(tmp_path: Path) -> None:
    from medvol.io.atomic import host_tag, remove_stale_temporaries

    target = tmp_path / "scan.nii.gz"
    dead = ended_process_id()
    leftover = tmp_path / f".scan.tmp-{host_tag()}-{dead}-0123abcd.nii.gz"
    other_target = tmp_path / f".scan2.tmp-{host_tag()}-{dead}-0123abcd.nii.gz"
    live = tmp_path / f".scan.tmp-{host_tag()}-{os.getpid()}-0123abcd.nii.gz"
    for path in (leftover, other_target, live):
        path.write_bytes(b"half")
    assert remove_stale_temporaries(target) == [leftover]
    assert other_target.exists() and live.exists()


def test_identifying_header_values_are_withheld_from_library_messages() -> None:
    from pydicom import Dataset

    from medvol.prediction.writers import identifying_values, withhold
    from tests.dicom_factory import ACCESSION_NUMBER, IDENTIFIERS, PATIENT_BIRTH_DATE, PATIENT_ID

    dataset = Dataset()
    dataset.PatientName = "Doe^Jane"
    dataset.PatientID = PATIENT_ID
    dataset.OtherPatientIDs = ["OTHER-1", "OTHER-2"]
    dataset.PatientBirthDate = PATIENT_BIRTH_DATE
    dataset.AccessionNumber = ACCESSION_NUMBER
    dataset.Modality = "CT"
    message = (
        f"value of patient_name is potentially invalid: Jane DOE, id {PATIENT_ID} / other-2, "
        f"born {PATIENT_BIRTH_DATE}, accession {ACCESSION_NUMBER}; modality CT is 'odd'"
    )
    cleaned = withhold(message, identifying_values([dataset]))
    for identifier in (*IDENTIFIERS, "OTHER-2", "other-2", "DOE"):
        assert identifier not in cleaned, (identifier, cleaned)
    assert cleaned.startswith("value of patient_name is potentially invalid: <withheld> <withheld>")
    assert "modality CT is" in cleaned
