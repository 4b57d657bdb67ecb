"""Sharding a batch: ``--shard I/N`` and torchrun ranks take disjoint, deterministic shares."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from medvol.errors import MedvolError


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)`` with ``0 <= I < N``; ``None`` → ``(0, 1)``.

    Raises:
        MedvolError: anything else, quoting the string.
    """
    if text is None:
        return 0, 1
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise MedvolError(None, f"--shard {text!r}: expected I/N, e.g. 0/4 for the first of 4 shards")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise MedvolError(None, f"--shard {text!r}: need N >= 1 and 0 <= I < N (I is 0-based)")
    return index, count


def effective_shard(shard: tuple[int, int], environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Combine ``--shard I/N`` with a torchrun rank: ``(I + N·RANK, N·WORLD_SIZE)``.

    ``items[I::N][RANK::WORLD_SIZE]`` equals ``items[I + N·RANK :: N·WORLD_SIZE]``,
    so the ranks of every shard partition that shard exactly.
    """
    from medvol.engine.launch import launch_environment

    launch = launch_environment(environ)
    index, count = shard
    return index + count * launch.rank, count * launch.world_size


def take_shard(items: Sequence[Any], index: int, count: int) -> list[Any]:
    """Every ``count``-th item starting at ``index`` (a deterministic partition)."""
    return list(items[index::count])


def shard_suffix(index: int, count: int) -> str:
    """``""`` for one shard, else ``".shard-I-of-N"`` (for per-shard file names)."""
    return "" if count == 1 else f".shard-{index}-of-{count}"
