"""Stored dataset checks: a case is read again only when one of its files changed size or mtime."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import medvol.data.cases as cases_module
import medvol.data.check_cache as check_cache
from medvol.cli import main
from medvol.data import validate
from medvol.data.case import Case
from medvol.data.cases import IndexReport
from medvol.data.check_cache import CheckCache, cache_folder, file_stats

CASES = ("case_a", "case_b", "case_c", "case_d", "case_e")


def write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """A flat ``images/`` + ``labels/`` folder of five clean cases."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for number, case_id in enumerate(CASES):
        shape = (8, 8, 6 + number)  # files of different sizes
        label = np.zeros(shape, np.uint8)
        label[2:5, 2:5, 2:5] = 1
        write(root / "images" / f"{case_id}.nii.gz", rng.normal(size=shape).astype(np.float32))
        write(root / "labels" / f"{case_id}.nii.gz", label)
    return root


@pytest.fixture()
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files the checks load and of the cases they hash, in order."""
    seen: list[str] = []
    load, load_label, digest = cases_module.load, cases_module.load_label, cases_module.content_digest

    def counting_load(path: Path, **options: object) -> object:
        seen.append(Path(path).name)
        return load(path, **options)  # type: ignore[arg-type]

    def counting_load_label(path: Path, *args: object) -> object:
        seen.append(Path(path).name)
        return load_label(path, *args)  # type: ignore[arg-type]

    def counting_digest(case: cases_module.Case) -> str:
        seen.append(f"hash {case.case_id}")
        return digest(case)

    monkeypatch.setattr(cases_module, "load", counting_load)
    monkeypatch.setattr(cases_module, "load_label", counting_load_label)
    monkeypatch.setattr(cases_module, "content_digest", counting_digest)
    return seen


def findings(report: IndexReport) -> set[tuple[str | None, str]]:
    return {(f.case_id, f.kind) for f in report.findings}


def age(path: Path, seconds: int = 100) -> None:
    """Set the file's modification time ``seconds`` later than it was."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + seconds * 10**9))


def test_a_second_check_reads_no_file_and_finds_the_same(dataset: Path, reads: list[str]) -> None:
    first = validate(dataset)
    assert len([name for name in reads if name.endswith(".nii.gz")]) == 10
    assert (first.checked, first.reused) == (5, 0)
    reads.clear()
    second = validate(dataset)
    assert reads == []
    assert (second.checked, second.reused) == (5 - 5, 5)
    assert [c.case_id for c in second.usable] == list(CASES)
    assert second.findings == first.findings and second.digests == first.digests


def test_touching_one_file_rechecks_its_case_only(dataset: Path, reads: list[str]) -> None:
    validate(dataset)
    reads.clear()
    age(dataset / "labels" / "case_c.nii.gz")
    report = validate(dataset)
    assert reads == ["case_c.nii.gz", "case_c.nii.gz", "hash case_c"]  # its image and label, one hash
    assert (report.checked, report.reused) == (1, 4)
    reads.clear()
    validate(dataset)
    assert reads == []  # the new check was stored


def _corrupt_keeping_size(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * (path.stat().st_size // 256) + bytes(path.stat().st_size % 256))


def test_a_corrupted_file_is_found_when_its_mtime_changed(dataset: Path) -> None:
    validate(dataset)
    _corrupt_keeping_size(dataset / "images" / "case_b.nii.gz")
    report = validate(dataset)
    assert ("case_b", "unreadable") in findings(report)
    assert [c.case_id for c in report.usable] == ["case_a", "case_c", "case_d", "case_e"]


def test_a_corruption_with_size_and_mtime_restored_needs_recheck(dataset: Path, tmp_path: Path) -> None:
    """The documented limit: same size, mtime set back: the stored check is trusted until --recheck."""
    validate(dataset)
    image = dataset / "images" / "case_b.nii.gz"
    stat = image.stat()
    _corrupt_keeping_size(image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert ("case_b", "unreadable") not in findings(validate(dataset))
    assert main(["index", str(dataset), "--out", str(tmp_path / "cases.csv"), "--recheck"]) == 1
    report = json.loads((tmp_path / "cases.report.json").read_text())
    assert {(f["case_id"], f["kind"]) for f in report["findings"]} == {("case_b", "unreadable")}
    assert ("case_b", "unreadable") in findings(validate(dataset))  # --recheck stored what it found


def test_deleted_files_are_reported(dataset: Path) -> None:
    validate(dataset)
    (dataset / "labels" / "case_a.nii.gz").unlink()
    (dataset / "images" / "case_d.nii.gz").unlink()
    (dataset / "labels" / "case_d.nii.gz").unlink()
    report = validate(dataset)
    assert findings(report) == {("case_a", "image_without_label"), ("case_d", "gone")}
    assert [c.case_id for c in report.usable] == ["case_b", "case_c", "case_e"]


def test_a_replaced_manifest_file_is_checked_again(tmp_path: Path, dataset: Path, reads: list[str]) -> None:
    """A manifest row pointing at another file: the stored check of the old file is not reused."""
    manifest = tmp_path / "cases.csv"
    rows = [f"{c},data/images/{c}.nii.gz,data/labels/{c}.nii.gz" for c in CASES]
    manifest.write_text("case_id,image,label\n" + "\n".join(rows) + "\n")
    validate(manifest)
    shutil.copy(dataset / "labels" / "case_a.nii.gz", dataset / "labels" / "other.nii.gz")
    manifest.write_text(manifest.read_text().replace("labels/case_a.nii.gz", "labels/other.nii.gz"))
    reads.clear()
    validate(manifest)
    assert reads == ["case_a.nii.gz", "other.nii.gz", "hash case_a"]


@pytest.mark.parametrize(
    "change",
    ["version", "format", "root", "options", "truncated"],
)
def test_stored_checks_of_another_version_options_or_broken_are_ignored(
    dataset: Path, reads: list[str], monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    validate(dataset)
    stored = CheckCache(dataset, {"classes": None}).path
    data = json.loads(stored.read_text())
    if change == "version":
        monkeypatch.setattr(check_cache, "__version__", "99.0.0")  # this medvol is older than the writer
    elif change == "format":
        data["format"] = check_cache.CHECK_FORMAT + 1
    elif change == "root":
        data["root"] = "/somewhere/else"
    elif change == "options":
        data["options"] = {"classes": [0, 1]}
    stored.write_text(json.dumps(data)[: 50 if change == "truncated" else None])
    reads.clear()
    report = validate(dataset)
    assert (report.checked, report.reused) == (5, 0)
    assert len([name for name in reads if name.endswith(".nii.gz")]) == 10


def test_other_classes_are_other_stored_checks(dataset: Path, reads: list[str]) -> None:
    """The label values allowed change the verdict: each set of options has its own stored checks."""
    assert findings(validate(dataset)) == set()
    reads.clear()
    strict = validate(dataset, classes=[0])
    assert {kind for _, kind in findings(strict)} == {"label_values"} and reads
    reads.clear()
    assert findings(validate(dataset)) == set() and reads == []
    assert len(list(cache_folder().iterdir())) == 2


def _twin_dataset(dataset: Path) -> None:
    """``case_e`` becomes a copy of ``case_a``."""
    for folder in ("images", "labels"):
        shutil.copy(dataset / folder / "case_a.nii.gz", dataset / folder / "case_e.nii.gz")


@pytest.mark.parametrize("stored_first", [False, True])
def test_checking_one_split_reads_its_cases_and_still_finds_duplicates(
    dataset: Path, reads: list[str], stored_first: bool
) -> None:
    """``only``: the other cases are not loaded; a copy of one of them in the split is still found,
    from its stored digest or by hashing the cases of the same file sizes (case_a only here)."""
    _twin_dataset(dataset)
    if stored_first:
        validate(dataset)
    reads.clear()
    report = validate(dataset, only={"case_d", "case_e"})
    loaded = {name for name in reads if name.endswith(".nii.gz")}
    assert loaded <= {"case_d.nii.gz", "case_e.nii.gz"}
    assert not stored_first or loaded == set()
    assert ("case_e", "duplicate_case") in findings(report)
    if not stored_first:
        assert sorted(report.unchecked) == ["case_a", "case_b", "case_c"]
        assert sorted(r for r in reads if r.startswith("hash")) == [
            "hash case_a",
            "hash case_d",
            "hash case_e",
        ]
        assert [c.case_id for c in report.usable] == ["case_d"]


def test_checking_one_split_keeps_the_other_stored_checks(dataset: Path, reads: list[str]) -> None:
    validate(dataset)
    age(dataset / "images" / "case_a.nii.gz")
    age(dataset / "images" / "case_d.nii.gz")
    reads.clear()
    report = validate(dataset, only={"case_d"})
    assert [r for r in reads if r.endswith(".nii.gz")] == ["case_d.nii.gz", "case_d.nii.gz"]
    assert report.unchecked == {"case_a"}
    reads.clear()
    validate(dataset)
    assert [r for r in reads if r.endswith(".nii.gz")] == ["case_a.nii.gz", "case_a.nii.gz"]


def test_an_unwritable_cache_folder_only_warns(
    dataset: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("MEDVOL_CACHE_DIR", str(blocker))
    report = validate(dataset)
    assert len(report.usable) == 5
    assert "cannot store the dataset checks" in caplog.text


def test_the_stored_checks_are_replaced_whole(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed while storing leaves the previous file intact (atomic replace), never half of one."""
    validate(dataset)
    stored = CheckCache(dataset, {"classes": None}).path
    before = stored.read_bytes()
    age(dataset / "images" / "case_b.nii.gz")

    def killed_halfway(self: Path, text: str, *args: object, **kwargs: object) -> int:
        with open(self, "w") as handle:
            handle.write(text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        validate(dataset)
    assert stored.read_bytes() == before
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]


def test_evaluate_checks_only_the_cases_it_scores(
    shared_data: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    reads: list[str],
    check_cache_folder: Path,
) -> None:
    """``medvol evaluate --split val`` reads the validation cases, never the training ones, and a
    second evaluation reads none of them for the check."""
    from medvol.evaluation import evaluate_run
    from tests.test_evaluate import copy_run, segmenter_run

    run = copy_run(segmenter_run(shared_data, tmp_path_factory), tmp_path)
    split = json.loads((run / "split.json").read_text())
    shutil.rmtree(check_cache_folder)  # what training stored
    reads.clear()
    evaluate_run(run, n_resamples=10, device="cpu")
    checked = {name.removesuffix(".nii.gz") for name in reads if name.endswith(".nii.gz")}
    assert checked == set(split["val"]) and not checked & set(split["train"])
    reads.clear()
    summary = evaluate_run(run, n_resamples=10, device="cpu").summary
    assert reads == [] and summary["n_cases"] == len(split["val"])


def test_a_stored_check_is_for_its_files_and_series_only(dataset: Path) -> None:
    validate(dataset)
    stored = CheckCache(dataset, {"classes": None}).load()
    case = Case("case_a", (dataset / "images" / "case_a.nii.gz",), dataset / "labels" / "case_a.nii.gz")
    stats = file_stats(case)
    assert stored.fresh(case, stats) is not None
    assert stored.fresh(replace(case, series="1.2.3"), stats) is None
    assert stored.fresh(replace(case, label_series="1.2.4"), stats) is None
    other_label = replace(case, label=dataset / "labels" / "case_b.nii.gz")
    assert stored.fresh(other_label, file_stats(other_label)) is None
