"""Study data: downloaded from a server on 127.0.0.1, resumed, verified, extracted safely, reused."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

import medvol
from medvol.cli import main
from medvol.demo import medmnist_classifier
from medvol.errors import MedvolError
from medvol.fetch import EXTRACTED, RECORD, data_folder, parse_sources
from medvol.reproduce import load_study, prepare_data
from tests.file_server import Served, md5, serve, write_study
from tests.shared_samples import write_medmnist_subset

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
SAMPLE_NPZ = Path(medvol.__file__).parent / "samples" / "adrenalmnist3d.npz"


@pytest.fixture
def served() -> Iterator[Served]:
    with serve() as server:
        server.files["/file.bin"] = PAYLOAD
        yield server


def file_study(tmp_path: Path, served: Served, checksum: str = md5(PAYLOAD)) -> Path:
    entry = {"path": "demo/file.bin", "url": served.url("file.bin"), "md5": checksum}
    return write_study(tmp_path / "study.yaml", [entry])


def fetch(study: Path, data: Path) -> int:
    return main(["fetch", str(study), "--data-dir", str(data)])


def test_file_is_downloaded_verified_recorded_and_reused(
    tmp_path: Path, served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    study, data = file_study(tmp_path, served), tmp_path / "data"
    assert fetch(study, data) == 0
    target = data / "demo" / "file.bin"
    assert target.read_bytes() == PAYLOAD and not target.with_name("file.bin.part").exists()
    assert f"MD5 {md5(PAYLOAD)} verified" in capsys.readouterr().out
    assert json.loads((data / RECORD).read_text())["demo/file.bin"]["md5"] == md5(PAYLOAD)

    assert fetch(study, data) == 0
    assert len(served.requests) == 1  # present and verified: not downloaded again

    # The record is keyed on size and modification time: the same size and mtime are not hashed again ...
    stat = target.stat()
    target.write_bytes(bytes(len(PAYLOAD)))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fetch(study, data) == 0
    # ... a new mtime is, and the changed file is refused, named with both checksums, and kept.
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    capsys.readouterr()
    assert fetch(study, data) == 1
    error = capsys.readouterr().err
    assert f"{target}: MD5 {md5(bytes(len(PAYLOAD)))}, expected {md5(PAYLOAD)}" in error
    assert target.is_file() and len(served.requests) == 1


def test_a_download_shows_its_progress_in_bytes(
    tmp_path: Path, served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import medvol.logs

    monkeypatch.setattr(medvol.logs, "PLAIN_PROGRESS_INTERVAL_S", 0.0)
    assert fetch(file_study(tmp_path, served), tmp_path / "data") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("download file.bin: ")]
    assert lines and lines[-1].startswith("download file.bin: 300.0 kB/300.0 kB (100%), "), lines
    assert lines[-1].endswith("B/s")


def test_a_broken_transfer_is_resumed_with_a_range_request(tmp_path: Path, served: Served) -> None:
    served.cut["/file.bin"] = 100_000
    assert fetch(file_study(tmp_path, served), tmp_path / "data") == 0
    assert (tmp_path / "data" / "demo" / "file.bin").read_bytes() == PAYLOAD
    assert served.requests == [("/file.bin", None), ("/file.bin", "bytes=100000-")]


def test_the_partial_file_of_an_earlier_run_is_resumed(tmp_path: Path, served: Served) -> None:
    part = tmp_path / "data" / "demo" / "file.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:5000])
    assert fetch(file_study(tmp_path, served), tmp_path / "data") == 0
    assert (tmp_path / "data" / "demo" / "file.bin").read_bytes() == PAYLOAD and not part.exists()
    assert served.requests == [("/file.bin", "bytes=5000-")]


def test_a_partial_file_of_another_version_is_replaced_by_a_whole_download(
    tmp_path: Path, served: Served
) -> None:
    part = tmp_path / "data" / "demo" / "file.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 7000)  # left by an earlier run of another file: resuming it gives another MD5
    assert fetch(file_study(tmp_path, served), tmp_path / "data") == 0
    assert (tmp_path / "data" / "demo" / "file.bin").read_bytes() == PAYLOAD
    assert served.requests == [("/file.bin", "bytes=7000-"), ("/file.bin", None)]


def test_a_server_without_ranges_sends_the_whole_file_again(tmp_path: Path, served: Served) -> None:
    served.ranges = False
    part = tmp_path / "data" / "demo" / "file.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 7000)  # not a prefix of the file: appending to it would corrupt the result
    assert fetch(file_study(tmp_path, served), tmp_path / "data") == 0
    assert (tmp_path / "data" / "demo" / "file.bin").read_bytes() == PAYLOAD


def test_a_corrupt_download_is_refused_naming_both_checksums(
    tmp_path: Path, served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    published = md5(b"the published file")
    assert fetch(file_study(tmp_path, served, published), tmp_path / "data") == 1
    error = capsys.readouterr().err
    assert f"has MD5 {md5(PAYLOAD)}, expected {published}; it was not kept" in error
    assert served.url("file.bin") in error
    assert not any((tmp_path / "data" / "demo").iterdir())  # neither the file nor its .part


def test_unreachable_or_missing_files_name_the_url_the_checksum_and_the_place(
    tmp_path: Path, served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    target = tmp_path / "data" / "demo" / "file.bin"
    for url in (f"http://127.0.0.1:{port}/file.bin", served.url("missing.bin")):
        study = write_study(
            tmp_path / "study.yaml", [{"path": "demo/file.bin", "url": url, "md5": md5(PAYLOAD)}]
        )
        assert fetch(study, tmp_path / "data") == 1
        error = capsys.readouterr().err
        assert f"cannot download {url} (" in error
        assert f"check that its MD5 is {md5(PAYLOAD)}, and put it at {target}" in error
    assert served.requests == [("/missing.bin", None)]


def tar_bytes(members: dict[str, bytes | None], links: dict[str, str] | None = None) -> bytes:
    """A tar archive: ``name → content`` (``None``: a folder), and symbolic links ``name → target``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def archive_study(tmp_path: Path, served: Served, archive: bytes) -> Path:
    served.files["/Task.tar"] = archive
    entry = {"path": "task", "url": served.url("Task.tar"), "md5": md5(archive), "archive": "Task.tar"}
    return write_study(tmp_path / "study.yaml", [entry])


def test_an_archive_is_extracted_into_its_folder_once(
    tmp_path: Path, served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tar_bytes(
        {
            "Task": None,
            "Task/dataset.json": b"{}",
            "Task/imagesTr/case_001.nii.gz": b"image",
            "Task/imagesTr/._case_001.nii.gz": b"mac",
            "._Task": b"mac",
        }
    )
    study, data = archive_study(tmp_path, served, archive), tmp_path / "data"
    assert fetch(study, data) == 0
    assert (data / "task" / "imagesTr" / "case_001.nii.gz").read_bytes() == b"image"
    assert json.loads((data / "task" / EXTRACTED).read_text())["md5"] == md5(archive)
    assert (data / "Task.tar").read_bytes() == archive  # kept: the folder can be extracted again from it
    assert sorted(p.name for p in data.iterdir()) == sorted([RECORD, "Task.tar", "task"])
    capsys.readouterr()
    assert fetch(study, data) == 0
    assert "verified" in capsys.readouterr().out and len(served.requests) == 1


@pytest.mark.parametrize(
    ("members", "links", "refused"),
    [
        ({"Task/ok.txt": b"1", "Task/../../escape.txt": b"2"}, {}, "would be written outside its folder"),
        ({"/tmp/absolute.txt": b"2"}, {}, "would be written outside its folder"),
        ({"Task/ok.txt": b"1"}, {"Task/link": "/etc/passwd"}, "is a link or a special file"),
    ],
    ids=["dot-dot", "absolute", "symlink"],
)
def test_unsafe_archives_are_refused(
    tmp_path: Path,
    served: Served,
    capsys: pytest.CaptureFixture[str],
    members: dict[str, bytes | None],
    links: dict[str, str],
    refused: str,
) -> None:
    data = tmp_path / "deep" / "data"
    assert fetch(archive_study(tmp_path, served, tar_bytes(members, links)), data) == 1
    error = capsys.readouterr().err
    assert f"{data / 'Task.tar'}: refused: member" in error and refused in error
    assert sorted(p.name for p in data.iterdir()) == sorted([RECORD, "Task.tar"])  # nothing extracted
    assert not list(tmp_path.rglob("escape.txt"))


def test_a_folder_not_extracted_by_medvol_is_used_with_a_warning(
    tmp_path: Path, served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data" / "task" / "imagesTr").mkdir(parents=True)
    assert fetch(archive_study(tmp_path, served, tar_bytes({"a": b"1"})), tmp_path / "data") == 0
    captured = capsys.readouterr()
    assert "not extracted by medvol from Task.tar" in captured.err and "cannot be verified" in captured.err
    assert "not verified" in captured.out and served.requests == []


def test_the_data_folder_is_the_option_else_the_environment_else_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import platformdirs

    monkeypatch.delenv("MEDVOL_DATA", raising=False)
    assert data_folder() == Path(platformdirs.user_cache_dir("medvol", appauthor=False)) / "data"
    monkeypatch.setenv("MEDVOL_DATA", str(tmp_path / "env"))
    assert data_folder() == tmp_path / "env"
    assert data_folder(tmp_path / "option") == tmp_path / "option"
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    # absolute, however it was spelt: a run records the folder, so that a resume finds the same recipe
    assert data_folder(Path("../option")) == (tmp_path / "option").resolve()


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"path": "../x", "url": "u", "md5": "0" * 32}, "must stay inside the data folder"),
        ({"path": "x", "url": "u", "md5": "abc"}, "is not 32 hexadecimal digits"),
        ({"path": "x", "url": "u"}, "needs path, url and md5"),
        ({"path": "x", "url": "u", "md5": "0" * 32, "sha": 1}, "unknown key"),
        ({"path": "x", "url": "u", "md5": "0" * 32, "archive": "a/b.tar"}, "must be a file name"),
    ],
)
def test_bad_data_entries_are_refused(tmp_path: Path, entry: dict[str, str], problem: str) -> None:
    with pytest.raises(MedvolError, match=problem):
        parse_sources([entry], tmp_path / "study.yaml")


def tiny_adrenal_study(tmp_path: Path, served: Served) -> Path:
    """A study whose recipe trains a small ResNet on 24 AdrenalMNIST3D cases served over HTTP."""
    npz = write_medmnist_subset(SAMPLE_NPZ, tmp_path / "served.npz", {"train": 8, "val": 8, "test": 8})
    served.files["/adrenal.npz"] = npz.read_bytes()
    recipe = medmnist_classifier("tiny/adrenal.npz", epochs=1, widths=4, model="resnet18")
    recipe["train"]["amp"] = "none"
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    entry = {"path": "tiny/adrenal.npz", "url": served.url("adrenal.npz"), "md5": md5(npz.read_bytes())}
    return write_study(tmp_path / "tiny.yaml", [entry])


def test_reproduce_downloads_the_study_data_into_the_data_folder_and_trains_on_it(
    tmp_path: Path, served: Served
) -> None:
    study, data, out = tiny_adrenal_study(tmp_path, served), tmp_path / "data", tmp_path / "out"
    assert main(["reproduce", str(study), "--seeds", "1", "--out", str(out), "--data-dir", str(data)]) == 0
    location = data / "tiny" / "adrenal.npz"
    results = json.loads((out / "results.json").read_text())
    assert results["data"] == [
        {
            "path": "tiny/adrenal.npz",
            "url": served.url("adrenal.npz"),
            "md5": md5(location.read_bytes()),
            "archive": None,
            "location": str(location),
            "verified": True,
        }
    ]
    assert not results["protocol_changed"]
    config = yaml.safe_load((Path(results["runs"][0]["run_dir"]) / "config.yaml").read_text())
    assert config["data"]["root"] == str(location)
    checksum = md5(location.read_bytes())
    assert (
        f"Data: `tiny/adrenal.npz` in the data folder (tiny/adrenal.npz, MD5 {checksum}, verified)"
        in (out / "results.md").read_text()
    )


def test_a_data_root_set_on_the_command_line_is_used_as_given(tmp_path: Path, served: Served) -> None:
    study = load_study(tiny_adrenal_study(tmp_path, served))
    root, fetched = prepare_data(study, "cpu", [f"data.root={tmp_path / 'mine.npz'}"], tmp_path / "data")
    assert (root, fetched, served.requests) == (None, [], [])
    root, fetched = prepare_data(study, "cpu", [], tmp_path / "data")
    assert root == tmp_path / "data" / "tiny" / "adrenal.npz" and [f.verified for f in fetched] == [True]


def test_the_shared_data_is_the_published_data(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shared AdrenalMNIST3D files have the official MD5s; its hippocampus folder is used unverified."""
    data = tmp_path / "data"
    (data / "adrenalmnist3d").mkdir(parents=True)
    for name in ("adrenalmnist3d.npz", "adrenalmnist3d_64.npz"):
        (data / "adrenalmnist3d" / name).symlink_to(shared_data / "adrenalmnist3d" / name)
    (data / "msd-hippocampus").symlink_to(shared_data / "msd-hippocampus")
    assert main(["fetch", "adrenalmnist3d", "adrenalmnist3d-64", "hippocampus", "--data-dir", str(data)]) == 0
    captured = capsys.readouterr()
    assert "MD5 bbd3c5a5576322bc4cdfea780653b1ce verified" in captured.out
    assert "MD5 17721accfe9fb005146a47d33bc54b2f verified" in captured.out
    assert "msd-hippocampus  not verified" in captured.out and "cannot be verified" in captured.err
