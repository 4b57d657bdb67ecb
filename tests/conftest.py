"""Shared fixtures: the real data in ../shared/data, and its absence policy.

A user's fresh clone has no ../shared: tests that need it skip with a reason.
Under CI (``CI=true``) its absence is a failure, so real-data checks never
silently stop running.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (real public scans)."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{SHARED_DATA} is missing; CI must run the real-data tests")
    pytest.skip(f"real data not found at {SHARED_DATA} (clone medvol beside a shared/data folder)")


@pytest.fixture(autouse=True)
def check_cache_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh folder for the stored dataset checks of each test (``MEDVOL_CACHE_DIR``), never the user's."""
    folder = tmp_path_factory.mktemp("medvol-cache")
    monkeypatch.setenv("MEDVOL_CACHE_DIR", str(folder))
    return folder
