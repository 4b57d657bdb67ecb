"""``medvol export --int8``: a quantised package, calibrated on training cases only, predicts as any package.

The tiny session runs of ``tests/conftest.py`` are quantised. The segmenter's
run is copied with a data folder that holds only its training cases, so a
calibration that read a validation case would fail. Checks: the network is
QDQ int8 and the spec says so with its calibration case ids; ``medvol
predict`` and the torch-free path predict from it; the classifier's
calibration inputs are training volumes; bad requests fail in one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from medvol import demo
from medvol.cli import main
from medvol.engine.inference import load_trained
from medvol.errors import MedvolError
from medvol.export import PackageFolder, export_run, load_package, read_spec
from medvol.export.quantize import Calibration, calibration_data, quantize_network
from tests.conftest import HOLDOUT_CASE
from tests.test_infer_without_torch import assert_same_outputs, predict_without_torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")


def copy_run(run: Path, folder: Path, root: Path) -> Path:
    """A copy of ``run`` in ``folder`` whose ``config.yaml`` reads its data from ``root``."""
    copy = shutil.copytree(run, folder / run.name, ignore=shutil.ignore_patterns("cache"))
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["data"]["root"] = str(root)
    (copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return copy


@pytest.fixture(scope="module")
def training_only_run(segmenter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The segmenter run reading a data folder that holds its training cases and nothing else."""
    work = tmp_path_factory.mktemp("int8-run")
    source = Path(yaml.safe_load((segmenter / "config.yaml").read_text())["data"]["root"])
    split = json.loads((segmenter / "split.json").read_text())
    assert split["train"] and split["val"]
    for case_id in split["train"]:
        for kind in ("images", "labels"):
            (work / "data" / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(source / kind / f"{case_id}.nii.gz", work / "data" / kind)
    return copy_run(segmenter, work, work / "data")


@pytest.fixture(scope="module")
def int8_package(training_only_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8-package") / "seg-int8"
    assert main(["export", str(training_only_run), str(out), "--int8"]) == 0
    return out


def test_spec_records_int8_and_training_calibration_cases(
    int8_package: Path, training_only_run: Path
) -> None:
    spec = read_spec(int8_package)
    split = json.loads((training_only_run / "split.json").read_text())
    model = spec["model"]
    assert model["precision"] == "int8"
    quantization = model["quantization"]
    assert quantization["format"] == "QDQ" and quantization["calibration_method"] == "MinMax"
    calibration = quantization["calibration"]
    assert calibration["split"] == "train" and calibration["seed"] == 0
    assert calibration["case_ids"] == sorted(split["train"])  # fewer than 16: all of them
    assert not set(calibration["case_ids"]) & set(split["val"])
    assert (
        len(calibration["case_ids"]) <= calibration["inputs"] <= 8 * len(calibration["case_ids"])
    )  # windows
    network = onnx.load(PackageFolder(int8_package).network)
    operators = {node.op_type for node in network.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators
    weights = [i for i in network.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(weights) >= 5  # the convolutions' weights are stored as int8
    assert not (int8_package / "model-fp32.onnx").exists()


def test_int8_package_predicts_through_medvol_predict_and_without_torch(
    int8_package: Path, seg_package: Path, tmp_path: Path
) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(demo.sample("hippocampus/holdout/images") / HOLDOUT_CASE, scans)
    assert main(["predict", str(int8_package), str(scans), str(tmp_path / "int8")]) == 0
    assert main(["predict", str(seg_package), str(scans), str(tmp_path / "fp32")]) == 0
    name = HOLDOUT_CASE.replace(".nii.gz", ".seg.nii.gz")
    int8, fp32 = (nib.load(tmp_path / folder / name) for folder in ("int8", "fp32"))
    np.testing.assert_array_equal(int8.affine, fp32.affine)
    labels, reference = np.asanyarray(int8.dataobj), np.asanyarray(fp32.dataobj)
    assert labels.shape == reference.shape
    assert np.mean(labels == reference) >= 0.9  # int8 rounds; it does not change the model
    result = predict_without_torch("predict", int8_package, scans, tmp_path / "no-torch")
    assert result.returncode == 0, result.stderr
    assert_same_outputs(tmp_path / "int8", tmp_path / "no-torch")


def test_classifier_calibration_reads_training_volumes_only(classifier: Path, tmp_path: Path) -> None:
    trained = load_trained(classifier)
    calibration = calibration_data(trained, count=5, seed=0)
    assert calibration_data(trained, count=5, seed=0).case_ids == calibration.case_ids  # seeded
    assert len(calibration.case_ids) == len(calibration.inputs) == 5
    arrays = np.load(trained.config.data.root)
    for case_id, array in zip(calibration.case_ids, calibration.inputs, strict=True):
        split, index = case_id.split("-")
        assert split == "train"
        np.testing.assert_array_equal(array[0, 0], arrays["train_images"][int(index)] / np.float32(255))
    package = export_run(classifier, tmp_path / "clf-int8", int8=True, calibration_cases=5)
    assert read_spec(package)["model"]["quantization"]["calibration"]["case_ids"] == calibration.case_ids
    probabilities = load_package(package).network(np.stack(calibration.inputs)[:, 0])
    assert probabilities.shape == (5, 2) and np.all(np.isfinite(probabilities))


def test_bad_int8_requests_fail_in_one_line(
    segmenter: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    moved = copy_run(segmenter, tmp_path, tmp_path / "moved-data")
    cases = [
        (
            ["export", str(moved), str(tmp_path / "a"), "--int8"],
            f"{tmp_path / 'moved-data'}: not found: int8",
        ),
        (["export", str(segmenter), str(tmp_path / "b"), "--calibration-cases", "3"], "applies to --int8"),
        (["export", str(segmenter), str(tmp_path / "c"), "--int8", "--calibration-cases", "0"], "at least 1"),
    ]
    for arguments, message in cases:
        assert main(arguments) == 1
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and message in error, error
    assert not any((tmp_path / name).exists() for name in "abc")
    with pytest.raises(MedvolError, match="int8 needs ONNX opset 13 or newer"):
        quantize_network(
            tmp_path / "model.onnx", tmp_path / "int8.onnx", Calibration([], [], ""), 12, "image"
        )


def test_every_calibration_input_sets_the_activation_ranges(tmp_path: Path) -> None:
    """The input's QuantizeLinear scale is the range of all calibration inputs, the first included."""
    import torch

    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    network = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    torch.onnx.export(
        network, (torch.zeros(1, 1, 4, 4, 4),), str(fp32), input_names=["image"], opset_version=17
    )
    large = np.full((1, 1, 4, 4, 4), 100.0, dtype=np.float32)
    small = [np.full((1, 1, 4, 4, 4), 1.0 + i, dtype=np.float32) for i in range(8)]
    calibration = Calibration(["train-0"], [large, *small], "test input")
    quantize_network(fp32, int8, calibration, 17, "image")
    graph = onnx.load(str(int8)).graph
    (node,) = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "image"]
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    assert float(scales[node.input[1]]) == pytest.approx(100.0 / 255, rel=1e-3)
