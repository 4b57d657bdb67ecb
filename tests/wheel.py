"""medvol's wheel built from the checkout's files and installed, without dependencies, into a folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def install_wheel(work: Path) -> Path:
    """Build medvol's wheel from the files git lists, install it into ``work/site``; return that folder.

    Skips the calling test outside a git checkout. Only git's files are copied,
    so no ``build/`` folder of an earlier build adds stale files to the wheel.
    """
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the wheel is built from the files git lists")
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (work / "source" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / "source" / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", "dist", "./source"], work)
    (wheel,) = (work / "dist").glob("medvol-*.whl")
    run([*pip, "install", "--no-deps", "--no-index", "--target", "site", str(wheel)], work)
    return work / "site"


def run(command: list[str], cwd: Path) -> None:
    """Run ``command`` in ``cwd``; fail the test with its output if it fails."""
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
