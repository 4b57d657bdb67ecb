"""MedMNIST 3D files: official splits, checks, and ``medvol index`` on them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from medvol.cli import main
from medvol.errors import UnreadableFileError
from medvol.io.medmnist import load_medmnist


def test_adrenalmnist3d_official_split(shared_data: Path) -> None:
    path = shared_data / "adrenalmnist3d/adrenalmnist3d.npz"
    assert hashlib.md5(path.read_bytes()).hexdigest() == "bbd3c5a5576322bc4cdfea780653b1ce"
    splits = load_medmnist(path)
    assert {name: len(split.labels) for name, split in splits.items()} == {
        "train": 1188,
        "val": 98,
        "test": 298,
    }
    assert splits["train"].images.shape[1:] == (28, 28, 28)
    assert set(np.unique(splits["test"].labels)) == {0, 1}


def test_broken_npz_files_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(UnreadableFileError, match=r"junk\.npz: not a readable"):
        load_medmnist(tmp_path / "junk.npz")
    np.savez(tmp_path / "partial.npz", train_images=np.zeros((2, 4, 4, 4)), train_labels=np.zeros((2, 1)))
    with pytest.raises(UnreadableFileError, match="missing val_images"):
        load_medmnist(tmp_path / "partial.npz")
    arrays = {f"{s}_images": np.zeros((2, 4, 4, 4), np.uint8) for s in ("train", "val", "test")}
    arrays |= {f"{s}_labels": np.zeros((2, 1), np.uint8) for s in ("train", "val", "test")}
    arrays["val_labels"] = np.zeros((3, 1), np.uint8)
    np.savez(tmp_path / "mismatch.npz", **arrays)
    with pytest.raises(UnreadableFileError, match="val: 2 images but labels of shape"):
        load_medmnist(tmp_path / "mismatch.npz")


def test_index_on_npz_writes_one_row_per_case(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "adrenal.csv"
    assert main(["index", str(shared_data / "adrenalmnist3d/adrenalmnist3d.npz"), "--out", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "case_id,split,index,class"
    assert len(rows) == 1 + 1188 + 98 + 298
