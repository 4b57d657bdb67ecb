"""On-disk cache of preprocessed cases, shared by DataLoader workers and DDP ranks.

An entry is a folder ``<root>/<key>/`` holding one ``.npy`` file per array and
``meta.json``. The key is a SHA-256 of the source files' contents and of the
preprocessing config, so a changed file or config misses the cache instead of
reading a stale entry. Entries are written to a temporary folder and renamed
into place, so a killed run leaves no half-written entry and two processes
racing to build the same entry both end with one complete copy. Arrays are
opened memory-mapped (``np.load(mmap_mode="r")``): every worker and rank reads
the same pages from the operating system's page cache instead of holding its
own copy in RAM.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvol.errors import MedvolError

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class CacheEntry:
    """A cached case: read-only memory-mapped arrays and JSON metadata."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (a folder, e.g. a DICOM series: of every file below it)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


class VolumeCache:
    """Preprocessed arrays on disk, keyed by source contents and config."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._digests: dict[tuple[str, int, int], str] = {}

    def key(self, sources: Sequence[Path], config: dict[str, Any]) -> str:
        """The entry key for these source files under this config (JSON-serialisable)."""
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
        for source in sources:
            digest.update(self._source_digest(Path(source)).encode())
        return digest.hexdigest()[:32]

    def _source_digest(self, path: Path) -> str:
        """Content hash, computed once per (path, size, mtime) in this process."""
        stat = path.stat()
        identity = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if identity not in self._digests:
            self._digests[identity] = file_digest(path)
        return self._digests[identity]

    def get(self, key: str) -> CacheEntry | None:
        """The entry for ``key``, memory-mapped, or None when it is not cached."""
        folder = self.root / key
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}
        except (OSError, ValueError, KeyError) as error:
            raise MedvolError(folder, f"corrupt cache entry ({error}); delete the folder") from error
        return CacheEntry(arrays=arrays, meta=meta)

    def put(self, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> CacheEntry:
        """Store arrays and metadata under ``key`` atomically; returns the stored entry."""
        final = self.root / key
        temporary = self.root / f".{key}.tmp-{uuid.uuid4().hex[:8]}"
        temporary.mkdir()
        try:
            for name, array in arrays.items():
                np.save(temporary / f"{name}.npy", array)  # keeps C or Fortran order, no copy
            (temporary / "meta.json").write_text(json.dumps({**meta, "arrays": sorted(arrays)}))
            os.rename(temporary, final)
        except OSError:
            if not (final / "meta.json").is_file():
                raise
            # Another worker or rank stored the same entry first: keep theirs.
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        entry = self.get(key)
        if entry is None:
            raise MedvolError(final, "cache entry missing right after it was written")
        return entry

    def get_or_build(
        self,
        sources: Sequence[Path],
        config: dict[str, Any],
        build: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]],
    ) -> CacheEntry:
        """The cached entry for ``sources`` under ``config``; ``build()`` it on a miss."""
        key = self.key(sources, config)
        entry = self.get(key)
        if entry is not None:
            return entry
        arrays, meta = build()
        return self.put(key, arrays, meta)
