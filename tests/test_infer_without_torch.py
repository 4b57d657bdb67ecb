"""``medvol predict PACKAGE`` without torch or MONAI (``pip install 'medvol[infer]'``).

Two checks, each against the same command run here, where torch is installed:

- a subprocess where importing torch, MONAI or TensorBoard fails as it does
  when they are not installed (a meta-path finder raising
  ``ModuleNotFoundError``) predicts a segmenter package (a hippocampus MRI and
  the CT series) and a classifier package (MedMNIST volumes, one of another
  shape so that it is resized) and writes the same files;
- medvol's wheel, installed into a folder beside only the distributions that
  its base and ``infer`` requirements name (their installed copies, followed
  through their own requirements), run by an interpreter that sees nothing
  else, predicts the segmenter package: the dependency declaration is enough.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from medvol import demo
from medvol.cli import main
from medvol.export import export_run
from tests.conftest import HOLDOUT_CASE
from tests.wheel import install_wheel

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
TRAINING_PACKAGES = ("torch", "monai", "tensorboard")

NOT_INSTALLED = f"""
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TRAINING_PACKAGES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from medvol.cli import main

code = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] in {TRAINING_PACKAGES!r}], "imported"
raise SystemExit(code)
"""


@pytest.fixture(scope="module")
def segmenter_scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hippocampus MRI (NIfTI) and the bundled CT series (JPEG 2000 DICOM)."""
    scans = tmp_path_factory.mktemp("seg-scans")
    (scans / "mri").mkdir()
    shutil.copy(demo.sample("hippocampus/holdout/images") / HOLDOUT_CASE, scans / "mri")
    shutil.copytree(demo.sample("ct_jpeg2000"), scans / "ct")
    return scans


def predict_without_torch(*arguments: str | Path) -> subprocess.CompletedProcess[str]:
    """``medvol ARGUMENTS`` in a fresh interpreter of this checkout; torch, MONAI, TensorBoard fail."""
    command = [sys.executable, "-c", NOT_INSTALLED, *map(str, arguments)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def assert_same_outputs(expected: Path, actual: Path) -> None:
    """The same label maps and probabilities (NIfTI), and the same predictions table."""
    images = sorted(p.relative_to(expected) for p in expected.rglob("*.nii.gz"))
    table = expected / "predictions.csv"
    assert images or table.exists()
    assert images == sorted(p.relative_to(actual) for p in actual.rglob("*.nii.gz"))
    for relative in images:
        reference, written = nib.load(expected / relative), nib.load(actual / relative)
        np.testing.assert_array_equal(written.affine, reference.affine)
        np.testing.assert_array_equal(np.asanyarray(written.dataobj), np.asanyarray(reference.dataobj))
    if table.exists():
        assert (actual / "predictions.csv").read_text() == table.read_text()


def test_segmenter_package_predicts_without_torch(
    seg_package: Path, segmenter_scans: Path, tmp_path: Path
) -> None:
    arguments = ("predict", seg_package, segmenter_scans)
    assert main([*map(str, arguments), str(tmp_path / "torch"), "--probabilities"]) == 0
    result = predict_without_torch(*arguments, tmp_path / "no-torch", "--probabilities")
    assert result.returncode == 0, result.stderr
    assert "2 predicted" in result.stdout
    assert_same_outputs(tmp_path / "torch", tmp_path / "no-torch")
    masks = sorted((tmp_path / "no-torch").rglob("*.seg.nii.gz"))
    assert [p.parent.name for p in masks] == ["ct", "mri"]
    assert all(np.asanyarray(nib.load(p).dataobj).max() > 0 for p in masks)  # something was segmented


def test_classifier_package_predicts_without_torch(classifier: Path, tmp_path: Path) -> None:
    package = export_run(classifier, tmp_path / "clf")
    images = np.load(demo.sample("adrenalmnist3d.npz"))["test_images"][:6]
    scans = tmp_path / "scans"
    scans.mkdir()
    for index, image in enumerate(images):
        nib.save(nib.Nifti1Image(image, np.eye(4)), scans / f"case{index}.nii.gz")
    nib.save(nib.Nifti1Image(images[0, 2:26, :, 1:24], np.eye(4)), scans / "cropped.nii.gz")  # resized
    assert main(["predict", str(package), str(scans), str(tmp_path / "torch")]) == 0
    result = predict_without_torch("predict", package, scans, tmp_path / "no-torch")
    assert result.returncode == 0, result.stderr
    assert "7 predicted" in result.stdout
    assert_same_outputs(tmp_path / "torch", tmp_path / "no-torch")


def test_verbs_that_need_torch_say_what_to_install(segmenter: Path, tmp_path: Path) -> None:
    result = predict_without_torch("predict", segmenter, demo.sample("hippocampus/holdout/images"), tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "medvol: error: this needs torch, which is not installed: pip install 'medvol[train]' "
        "(predicting from a model package of `medvol export` needs only 'medvol[infer]')"
    )


# ------------------------------------------------------------------ the declared dependencies


def declared_closure(requirements: list[str], extras: set[str]) -> set[str]:
    """Installed distributions that ``requirements`` (with ``extras`` on) need, followed transitively."""
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [(Requirement(text), frozenset(extras)) for text in requirements]
    while pending:
        requirement, active = pending.pop()
        environments = [{"extra": extra} for extra in active or {""}]
        if requirement.marker and not any(requirement.marker.evaluate(e) for e in environments):
            continue
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key[0] == "medvol" or key in seen:
            continue
        seen.add(key)
        own = metadata.distribution(requirement.name).requires or []
        pending += [(Requirement(text), key[1]) for text in own]
    return {name for name, _ in seen}


def link_distribution(name: str, site: Path) -> None:
    """Link every top-level file and folder of the installed distribution ``name`` into ``site``."""
    distribution = metadata.distribution(name)
    base = Path(str(distribution.locate_file("")))
    for top in {Path(str(f)).parts[0] for f in distribution.files or [] if not str(f).startswith("..")}:
        if not (site / top).exists() and (base / top).exists():
            (site / top).symlink_to(base / top)


@pytest.fixture(scope="module")
def infer_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """medvol's wheel and the distributions of its base and ``infer`` requirements, nothing else."""
    site = install_wheel(tmp_path_factory.mktemp("infer-wheel"))
    (dist_info,) = site.glob("medvol-*.dist-info")
    requirements = metadata.PathDistribution(dist_info).requires or []
    closure = declared_closure(requirements, {"infer"})
    assert not closure & {"torch", "monai", "tensorboard"}, closure
    for name in sorted(closure):
        link_distribution(name, site)
    return site


def test_the_wheel_with_only_its_infer_dependencies_predicts_a_package(
    infer_site: Path, seg_package: Path, segmenter_scans: Path, tmp_path: Path
) -> None:
    """``python -I -S``: no site-packages, no PYTHONPATH, no current folder; only ``infer_site``."""
    code = (
        f"import sys; sys.path.insert(0, {str(infer_site)!r}); import importlib.util, medvol; "
        f"assert importlib.util.find_spec('torch') is None and importlib.util.find_spec('monai') is None; "
        f"assert medvol.__file__.startswith({str(infer_site)!r}), medvol.__file__; "
        "from medvol.cli import main; raise SystemExit(main(sys.argv[1:]))"
    )
    arguments = ["predict", str(seg_package), str(segmenter_scans)]
    command = [sys.executable, "-I", "-S", "-c", code, *arguments, str(tmp_path / "wheel")]
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert main([*arguments, str(tmp_path / "torch")]) == 0
    assert_same_outputs(tmp_path / "torch", tmp_path / "wheel")
