"""The on-disk preprocessing cache."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from medvol.data.cache import VolumeCache
from medvol.errors import MedvolError


def build_counter(calls: list[int], value: float):  # type: ignore[no-untyped-def]
    def build() -> tuple[dict[str, np.ndarray], dict[str, object]]:
        calls.append(1)
        return {"image": np.full((1, 4, 4, 4), value, np.float32)}, {"case_id": "a"}

    return build


def test_second_read_hits_the_cache_memory_mapped(tmp_path: Path) -> None:
    source = tmp_path / "scan.nii.gz"
    source.write_bytes(b"scan bytes")
    cache = VolumeCache(tmp_path / "cache")
    calls: list[int] = []
    first = cache.get_or_build([source], {"spacing_mm": [1, 1, 1]}, build_counter(calls, 1.0))
    second = cache.get_or_build([source], {"spacing_mm": [1, 1, 1]}, build_counter(calls, 2.0))
    assert len(calls) == 1
    assert isinstance(second.arrays["image"], np.memmap)
    assert not second.arrays["image"].flags.writeable
    np.testing.assert_array_equal(second.arrays["image"], first.arrays["image"])
    assert second.meta["case_id"] == "a"


def test_changed_config_or_file_misses_the_cache(tmp_path: Path) -> None:
    source = tmp_path / "scan.nii.gz"
    source.write_bytes(b"version 1")
    cache = VolumeCache(tmp_path / "cache")
    calls: list[int] = []
    cache.get_or_build([source], {"spacing_mm": [1, 1, 1]}, build_counter(calls, 1.0))
    cache.get_or_build([source], {"spacing_mm": [2, 2, 2]}, build_counter(calls, 1.0))
    source.write_bytes(b"version 2")
    os.utime(source, ns=(1, 1))  # a new mtime as well as new content
    cache.get_or_build([source], {"spacing_mm": [1, 1, 1]}, build_counter(calls, 1.0))
    assert len(calls) == 3
    # Same content under another mtime is the same entry.
    os.utime(source, ns=(2, 2))
    cache.get_or_build([source], {"spacing_mm": [1, 1, 1]}, build_counter(calls, 1.0))
    assert len(calls) == 3


def _store(root: str) -> float:
    cache = VolumeCache(root)
    entry = cache.put("samekey", {"image": np.arange(1000, dtype=np.float32)}, {})
    return float(entry.arrays["image"].sum())


def test_concurrent_writers_leave_one_complete_entry(tmp_path: Path) -> None:
    with ProcessPoolExecutor(2) as pool:
        sums = list(pool.map(_store, [str(tmp_path)] * 6))
    assert sums == [float(np.arange(1000).sum())] * 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samekey"]


def test_corrupt_entry_names_the_folder(tmp_path: Path) -> None:
    cache = VolumeCache(tmp_path)
    cache.put("key", {"image": np.zeros(3)}, {})
    (tmp_path / "key" / "image.npy").write_bytes(b"broken")
    with pytest.raises(MedvolError, match="corrupt cache entry"):
        cache.get("key")
