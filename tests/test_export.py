"""``medvol export`` and ONNX Runtime inference: a package predicts what ``medvol predict`` predicts.

Two tiny runs are trained once per session on the bundled samples
(``tests/conftest.py``: a U-Net on hippocampus cases at 4 mm, a ResNet on 40
AdrenalMNIST3D cases). The checks:
the package is whole and valid ONNX; logits of ONNX Runtime within 1e-4 of
torch; the same masks on a hippocampus case and on the CT series, through a
package and through ``--engine onnxruntime``; classifier probabilities within
1e-5; and every damaged package refused with one line naming the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from medvol import demo
from medvol.cli import main
from medvol.engine.inference import classify, load_trained, prepare_input
from medvol.engine.torch_network import TorchNetwork
from medvol.errors import MedvolError
from medvol.export import FORMAT_VERSION, PackageFolder, export_run, load_package, read_spec
from medvol.io import load
from medvol.prediction import Options, predict
from tests.conftest import HOLDOUT_CASE

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_package_is_whole_valid_onnx_and_records_the_run(segmenter: Path, seg_package: Path) -> None:
    package = PackageFolder(seg_package)
    assert sorted(p.name for p in seg_package.iterdir()) == sorted(p.name for p in package.files)
    model = onnx.load(package.network)
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}[""] >= 17
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "x", "y", "z"]
    spec = read_spec(seg_package)
    assert spec["format_version"] == FORMAT_VERSION
    assert spec["input"] == json.loads((segmenter / "input.json").read_text())
    assert spec["normalizer"] == json.loads((segmenter / "normalizer.json").read_text())
    assert spec["preprocess"]["spacing_mm"] == [4.0, 4.0, 4.0]
    assert spec["preprocess"]["pad_to_shape"] == [16, 16, 16]
    assert spec["inference"]["sliding_window"]["overlap"] == 0.5
    assert [c["name"] for c in spec["classes"]] == ["background", "class 1", "class 2"]
    trained = load_trained(segmenter)
    assert spec["provenance"]["epoch"] == trained.epoch
    assert spec["provenance"]["checkpoint_sha256"] == _sha256(trained.weights)
    assert (seg_package / "config.yaml").read_bytes() == (segmenter / "config.yaml").read_bytes()
    assert "## Model card" in package.card.read_text()


@pytest.mark.parametrize("shape", [(4, 1, 16, 16, 16), (1, 1, 32, 16, 24)])
def test_logits_agree_with_torch(segmenter: Path, seg_package: Path, shape: tuple[int, ...]) -> None:
    """On a real prepared scan: a batch of windows, and a larger input (the spatial axes are dynamic)."""
    trained, packaged = load_trained(segmenter), load_package(seg_package)
    image = prepare_input(trained, load(demo.sample("hippocampus/holdout/images") / HOLDOUT_CASE)).array
    batch = np.stack([_window(image, shape[2:], offset) for offset in range(shape[0])])
    with torch.no_grad():
        expected = _module(trained)(torch.from_numpy(batch)).numpy()
    logits = packaged.network(batch)
    assert logits.shape == expected.shape == (shape[0], 3, *shape[2:])
    assert np.abs(logits - expected).max() <= 1e-4


def test_masks_identical_on_hippocampus_and_ct(segmenter: Path, seg_package: Path, tmp_path: Path) -> None:
    """The run with torch, the package and ``--engine onnxruntime`` give the same masks on each scan's grid.

    The hippocampus mask is identical. On the CT series (5.2 million voxels),
    where this one-epoch network's classes are nearly tied in places, a voxel
    may only differ where torch's two top probabilities are within 1e-5 of each
    other: a tie that fp32 rounding (1e-7) decides either way.
    """
    scans = tmp_path / "scans"
    (scans / "mri").mkdir(parents=True)
    shutil.copy(demo.sample("hippocampus/holdout/images") / HOLDOUT_CASE, scans / "mri")
    shutil.copytree(demo.sample("ct_jpeg2000"), scans / "ct")
    outcomes = [
        predict(segmenter, scans, tmp_path / "torch", Options(probabilities=True)),
        predict(seg_package, scans, tmp_path / "package", Options(probabilities=True)),
        predict(segmenter, scans, tmp_path / "engine", Options(engine="onnxruntime")),
    ]
    assert all(o.exit_code == 0 and o.predicted == 2 for o in outcomes)
    labels = sorted(p.relative_to(tmp_path / "torch") for p in (tmp_path / "torch").rglob("*.seg.nii.gz"))
    assert [p.parent.name for p in labels] == ["ct", "mri"]
    for relative in labels:
        reference, label = (nib.load(tmp_path / name / relative) for name in ("torch", "package"))
        expected, actual = np.asanyarray(reference.dataobj), np.asanyarray(label.dataobj)
        assert expected.max() > 0  # something was segmented
        np.testing.assert_array_equal(label.affine, reference.affine)
        engine = nib.load(tmp_path / "engine" / relative)
        np.testing.assert_array_equal(np.asanyarray(engine.dataobj), actual)  # one export, one runtime
        probability = relative.with_name(relative.name.replace(".seg.", ".prob."))
        torch_p, onnx_p = (nib.load(tmp_path / n / probability).get_fdata() for n in ("torch", "package"))
        assert np.abs(torch_p - onnx_p).max() <= 1e-5
        if relative.parent.name == "mri":
            np.testing.assert_array_equal(actual, expected)
            continue
        top_two = np.sort(torch_p, axis=-1)[..., -2:]
        differ = actual != expected
        assert differ.sum() <= 5 and np.all(top_two[differ, 1] - top_two[differ, 0] <= 1e-5)
    manifest = json.loads((tmp_path / "package" / "predict.json").read_text())
    assert manifest["settings"]["engine"] == "onnxruntime"
    assert "engine" not in json.loads((tmp_path / "torch" / "predict.json").read_text())["settings"]


def test_classifier_probabilities_agree(classifier: Path, tmp_path: Path, capsys: Any) -> None:
    package = export_run(classifier, tmp_path / "clf")
    spec = read_spec(package)
    assert spec["input"]["shape"] == [28, 28, 28] and spec["normalizer"] is None
    assert spec["model"]["input"]["shape"] == ["batch", 1, 28, 28, 28]
    trained, packaged = load_trained(classifier), load_package(package)
    assert isinstance(trained.network, TorchNetwork) and trained.network.precision
    assert trained.network.precision.channels_last  # exported from a channels-last model
    images = np.load(trained.config.data.root)["test_images"]
    scans = tmp_path / "scans"
    scans.mkdir()
    for index, image in enumerate(images):
        nib.save(nib.Nifti1Image(image, np.eye(4)), scans / f"case{index}.nii.gz")
    inputs = np.stack([prepare_input(packaged, load(path)).array for path in sorted(scans.iterdir())])
    expected, probabilities = classify(trained, inputs), classify(packaged, inputs)
    assert probabilities.shape == (8, 2)
    assert np.abs(probabilities - expected).max() <= 1e-5
    for name, run in (("torch", classifier), ("package", package)):
        assert main(["predict", str(run), str(scans), str(tmp_path / name)]) == 0
    table = (tmp_path / "package" / "predictions.csv").read_text()
    assert table == (tmp_path / "torch" / "predictions.csv").read_text()


def _retag_opset(package: Path, version: int) -> None:
    model = onnx.load(PackageFolder(package).network)
    for opset in model.opset_import:
        if opset.domain == "":
            opset.version = version
    onnx.save(model, PackageFolder(package).network)
    _edit_spec(package, lambda spec: spec["model"].update(sha256=_sha256(PackageFolder(package).network)))


def _edit_spec(package: Path, change: Any) -> None:
    path = PackageFolder(package).spec
    spec = json.loads(path.read_text())
    change(spec)
    path.write_text(json.dumps(spec))


DAMAGE = {
    "checksum": (
        lambda p: PackageFolder(p).network.write_bytes(PackageFolder(p).network.read_bytes() + b"\0"),
        "model.onnx: SHA-256",
    ),
    "missing file": (lambda p: PackageFolder(p).config.unlink(), "config.yaml: missing"),
    "opset": (
        lambda p: _retag_opset(p, 99),
        "model.onnx: ONNX Runtime",
    ),
    "newer format": (
        lambda p: _edit_spec(p, lambda s: s.update(format_version=FORMAT_VERSION + 1, medvol_version="9.0")),
        f"model.json: package format {FORMAT_VERSION + 1} (written by medvol 9.0)",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_packages_are_refused_in_one_line(
    seg_package: Path, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    package = shutil.copytree(seg_package, tmp_path / "package")
    change, message = DAMAGE[damage]
    change(package)
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(demo.sample("hippocampus/holdout/images") / HOLDOUT_CASE, scans)
    assert main(["predict", str(package), str(scans), str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert f"{package}/{message}" in error, error
    if damage == "opset":
        assert "opset 99" in error and "runs opsets up to" in error
    assert not (tmp_path / "out").exists()


def test_export_refuses_to_overwrite_and_a_failed_export_leaves_nothing(
    segmenter: Path, seg_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(MedvolError, match="already exists"):
        export_run(segmenter, seg_package)
    with monkeypatch.context() as patch:
        patch.setattr("medvol.export.exporter.EXPORT_PACKAGES", ("onnx", "no_such_medvol_dependency"))
        with pytest.raises(MedvolError, match=r"needs no_such_medvol_dependency: pip install"):
            export_run(segmenter, tmp_path / "package")
    monkeypatch.setattr("medvol.export.exporter.EXPORT_TOLERANCE", -1.0)  # every check fails
    with pytest.raises(MedvolError, match="differ from torch's"):
        export_run(segmenter, tmp_path / "package")
    with pytest.raises(MedvolError, match="differ from torch's"):
        export_run(segmenter, shutil.copytree(seg_package, tmp_path / "old"), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no package, no temporary folder
    assert read_spec(tmp_path / "old") == read_spec(seg_package)  # the old package is untouched


def test_engine_torch_is_refused_for_a_package(seg_package: Path, tmp_path: Path) -> None:
    with pytest.raises(MedvolError, match="holds the ONNX network only"):
        predict(seg_package, demo.sample("hippocampus/holdout/images"), tmp_path, Options(engine="torch"))


def _window(image: np.ndarray, size: tuple[int, ...], offset: int) -> np.ndarray:
    """The ``size`` window of ``image`` ``(C, X, Y, Z)`` at ``offset`` voxels, padded with its minimum."""
    padded = np.pad(
        image,
        [(0, 0)] + [(0, max(0, offset + s - n)) for s, n in zip(size, image.shape[1:], strict=True)],
        constant_values=float(image.min()),
    )
    x, y, z = size
    return padded[:, offset : offset + x, offset : offset + y, offset : offset + z]


def _module(trained: Any) -> torch.nn.Module:
    assert isinstance(trained.network, TorchNetwork)
    return trained.network.module


def _sha256(path: Path) -> str:
    from medvol.io.atomic import file_sha256

    return file_sha256(path)
