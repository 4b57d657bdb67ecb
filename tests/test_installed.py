"""medvol installed from its wheel, run from another folder: the studies and their recipes ship with it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.file_server import Served, md5, serve, write_study
from tests.shared_samples import write_medmnist_subset
from tests.wheel import install_wheel


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder medvol's wheel, built from the checkout's files, was installed into (no dependencies)."""
    return install_wheel(tmp_path_factory.mktemp("wheel"))


def medvol(installed: Path, cwd: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """``python -m medvol ARGUMENTS`` with the installed copy first on the path, in ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(installed)}
    return run([sys.executable, "-m", "medvol", *arguments], cwd=cwd, env=env)


def test_the_installed_package_lists_its_studies_from_any_folder(installed: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    where = run([sys.executable, "-c", "import medvol; print(medvol.__file__)"], cwd=tmp_path, env=env)
    assert Path(where.stdout.strip()).is_relative_to(installed)
    listed = medvol(installed, tmp_path, "reproduce", "--list").stdout
    assert [line.split()[0] for line in listed.splitlines()] == [
        "adrenalmnist3d",
        "adrenalmnist3d-64",
        "hippocampus",
    ]
    assert len(list((installed / "medvol" / "studies" / "recipes").glob("*.yaml"))) == 6


def test_the_installed_package_verifies_data_and_reproduces_a_study(installed: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The bundled 28³ sample is the published AdrenalMNIST3D file: the shipped study verifies it.
    data = tmp_path / "data"
    (data / "adrenalmnist3d").mkdir(parents=True)
    shutil.copy(installed / "medvol" / "samples" / "adrenalmnist3d.npz", data / "adrenalmnist3d")
    fetched = medvol(installed, elsewhere, "fetch", "adrenalmnist3d", "--data-dir", str(data)).stdout
    assert "MD5 bbd3c5a5576322bc4cdfea780653b1ce verified" in fetched

    # A tiny study training the shipped CPU recipe on 24 cases downloaded from a server on 127.0.0.1.
    with serve() as served:
        study = tiny_study_of_the_shipped_recipe(installed, tmp_path, served)
        tiny = ["train.epochs=1", "train.amp=none", "model.options.widths=4", "augment=null"]
        arguments = ["reproduce", str(study), "--seeds", "1", "--data-dir", str(tmp_path / "tiny-data")]
        medvol(installed, elsewhere, *arguments, *(f"--set={override}" for override in tiny))
    results = json.loads((elsewhere / "reproductions" / "tiny-cpu" / "results.json").read_text())
    assert Path(results["config"]).is_relative_to(installed)
    assert results["data"][0]["verified"] and results["runs"][0]["metrics"]["auc"]["estimate"] is not None


def tiny_study_of_the_shipped_recipe(installed: Path, tmp_path: Path, served: Served) -> Path:
    sample = installed / "medvol" / "samples" / "adrenalmnist3d.npz"
    npz = write_medmnist_subset(sample, tmp_path / "served.npz", {"train": 8, "val": 8, "test": 8})
    served.files["/adrenalmnist3d.npz"] = npz.read_bytes()
    entry = {
        "path": "adrenalmnist3d/adrenalmnist3d.npz",
        "url": served.url("adrenalmnist3d.npz"),
        "md5": md5(npz.read_bytes()),
    }
    recipe = installed / "medvol" / "studies" / "recipes" / "adrenalmnist3d-resnet18-cpu.yaml"
    return write_study(tmp_path / "tiny.yaml", [entry], budget=recipe)
