"""Pieces every benchmark script shares: progress lines, the environment record, the report."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def make_log(name: str) -> Callable[[str], None]:
    """A ``log(message)`` that writes ``[name] message`` to stderr (stdout carries only the JSON)."""

    def log(message: str) -> None:
        print(f"[{name}] {message}", file=sys.stderr, flush=True)

    return log


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr meanwhile: libraries print notices (some from C)."""
    stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
        os.close(stdout)


def git_state(unknown: str = "unknown (not a git checkout)") -> str:
    """The commit the benchmark ran on, and whether medvol/ had uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "medvol"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return unknown
    return f"{commit} (medvol/ with uncommitted changes)" if dirty else commit


def hardware() -> dict[str, Any]:
    """``nproc``, ``cpu_model``, ``memory_gib`` and ``platform``."""
    cpu_model = "unknown"
    memory_gib = None
    try:
        cpu_model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        mem_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        memory_gib = round(mem_kib / 1024 / 1024, 1)
    except (OSError, StopIteration):
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory_gib": memory_gib,
        "platform": platform.platform(),
    }


def environment() -> dict[str, Any]:
    """Hardware and library versions, for the report."""
    import numpy as np
    import pydicom
    import SimpleITK as sitk

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    versions.update({"pydicom": pydicom.__version__, "SimpleITK": sitk.Version.VersionString()})
    for name in ("medvol", "monai", "torch", "nibabel", "itk"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "not installed"
    return {"medvol_commit": git_state(), **hardware(), "versions": versions}


def command_line() -> str:
    """How this script was started, e.g. ``python benchmarks/bench_io.py --quick``."""
    return " ".join([Path(sys.executable).name, *sys.argv])


def write_report(report: dict[str, Any], out: Path | None) -> None:
    """Print the JSON report to stdout and, with ``out``, write it there too."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


def finish_report(fields: dict[str, Any], started: float, out: Path | None) -> None:
    """``write_report`` of ``command``, then ``fields``, then ``total_s`` since ``started``."""
    total_s = round(time.perf_counter() - started, 1)
    write_report({"command": command_line(), **fields, "total_s": total_s}, out)
