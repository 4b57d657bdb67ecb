"""Every task prepares a scan for the model exactly as training did, on every path.

For each kind of data the training dataset's sample (built from the cache, the
training path) must equal, bit for bit, what ``medvol predict`` and
``medvol evaluate`` give the model for the same scan; and both verbs must get
their inputs from the run's task, not from a path of their own.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import medvol
from medvol.cli import main
from medvol.config import parse_config
from medvol.engine.distributed import Runtime
from medvol.engine.inference import load_trained, prepare_input
from medvol.engine.run_folder import RunFolder
from medvol.engine.train import train
from medvol.errors import MedvolError
from medvol.tasks import MedMNISTTask, ModelInput, SegmentationTask, Task, task_for
from medvol.volume import Volume

HIPPOCAMPUS = Path(str(medvol.sample("hippocampus")))


def _tiny_run(root: Path, data: dict[str, Any], model: dict[str, Any], loss: str, metric: str) -> Path:
    config = parse_config(
        {
            "data": data,
            "model": model,
            "loss": {"name": loss},
            "train": {
                "epochs": 1,
                "batch_size": 4,
                "seed": 0,
                "device": "cpu",
                "metric": metric,
                "metric_mode": "max",
            },
            "tracking": {"output_dir": str(root), "name": "run", "tensorboard": False},
        }
    )
    return train(config)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch UNet on the 12 bundled hippocampus training cases."""
    return _tiny_run(
        tmp_path_factory.mktemp("segmenter"),
        {
            "task": "segmentation",
            "root": str(HIPPOCAMPUS / "train"),
            "split": {"method": "nnunet", "n_splits": 4},
            "num_classes": 3,
            "patch_size": [32, 48, 32],
        },
        {"name": "unet", "options": {"in_channels": 1, "num_classes": 3, "base_filters": 4, "num_levels": 3}},
        "dice_ce",
        "dice",
    )


@pytest.fixture(scope="module")
def medmnist_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch ResNet-10 on 16 + 8 cases of the bundled AdrenalMNIST3D file."""
    root = tmp_path_factory.mktemp("medmnist")
    arrays = np.load(Path(str(medvol.sample("adrenalmnist3d.npz"))))
    subset = {key: arrays[key][:16] for key in arrays.files}
    np.savez(root / "adrenal.npz", **subset)
    return _tiny_run(
        root,
        {
            "task": "medmnist-classification",
            "root": str(root / "adrenal.npz"),
            "split": {"method": "official"},
        },
        {
            "name": "resnet10",
            "options": {
                "in_channels": 1,
                "num_classes": 2,
                "stem_stride": 2,
                "stem_pool": False,
                "widths": 4,
            },
        },
        "cross_entropy",
        "auc",
    )


def _recording(monkeypatch: pytest.MonkeyPatch, task: type[Task]) -> list[np.ndarray]:
    """Record every model input the task prepares (a copy of each array)."""
    seen: list[np.ndarray] = []
    original = task.prepare_input

    def record(self: Task, recipe: Any, scan: Volume) -> ModelInput:
        prepared = original(self, recipe, scan)
        seen.append(prepared.array.copy())
        return prepared

    monkeypatch.setattr(task, "prepare_input", record)
    return seen


def test_segmentation_input_is_the_training_input_on_every_path(
    segmenter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = RunFolder(segmenter)
    config = run.read_config()
    data = task_for(config).build_data(Runtime(torch.device("cpu")), run)
    sample = data.val[0]
    case = data.val.cases[0]  # type: ignore[union-attr]
    trained = load_trained(segmenter, device="cpu")
    assert isinstance(trained.task, SegmentationTask)
    prepared = prepare_input(trained, medvol.load(case.images[0]))
    np.testing.assert_array_equal(prepared.array, sample["image"].numpy())  # training path, bit for bit

    manifest = tmp_path / "case.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows(
            [["case_id", "image", "label"], [case.case_id, case.images[0], case.label]]
        )
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "scan.nii.gz").symlink_to(case.images[0])
    seen = _recording(monkeypatch, SegmentationTask)
    assert (
        main(["predict", str(segmenter), str(tmp_path / "in"), str(tmp_path / "out"), "--device", "cpu"]) == 0
    )
    assert main(["evaluate", str(segmenter), "--cases", str(manifest), "--n-resamples", "10"]) == 0
    assert len(seen) == 2
    np.testing.assert_array_equal(seen[0], sample["image"].numpy())
    np.testing.assert_array_equal(seen[1], sample["image"].numpy())
    predicted = medvol.load(tmp_path / "out" / "scan.seg.nii.gz")
    evaluated = medvol.load(run.evaluation("case").prediction(case.case_id))
    np.testing.assert_array_equal(predicted.array, evaluated.array)  # the same mask from both verbs


def test_medmnist_input_is_value_over_255_on_every_path(
    medmnist_classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = RunFolder(medmnist_classifier)
    data = task_for(run.read_config()).build_data(Runtime(torch.device("cpu")), run)
    arrays = np.load(run.read_config().data.root)
    image = arrays["val_images"][0]
    training = data.val[0]["image"].numpy()
    np.testing.assert_array_equal(training, image[np.newaxis] / np.float32(255))
    trained = load_trained(medmnist_classifier, device="cpu")
    assert isinstance(trained.task, MedMNISTTask)
    scored = trained.task.scored_cases(trained.recipe, run, None, "val")
    case_id, target, evaluated = next(scored.items)
    assert case_id == "val-00000" and target == int(arrays["val_labels"][0, 0])
    np.testing.assert_array_equal(evaluated, training)  # evaluation path

    halved = image // 2  # values 0..127: dividing by 255 and by the maximum differ
    assert halved.max() == 127
    (tmp_path / "in").mkdir()
    medvol.save(Volume(halved[np.newaxis], np.eye(4)), tmp_path / "in" / "case.nii.gz")
    expected = halved[np.newaxis].astype(np.float32) / 255.0
    prepared = prepare_input(trained, medvol.load(tmp_path / "in" / "case.nii.gz")).array
    np.testing.assert_array_equal(prepared, expected)
    assert prepared.max() == np.float32(127 / 255)
    seen = _recording(monkeypatch, MedMNISTTask)
    assert main(["predict", str(medmnist_classifier), str(tmp_path / "in"), str(tmp_path / "out")]) == 0
    np.testing.assert_array_equal(seen[0], expected)  # prediction path


def test_medmnist_classifier_refuses_a_scan_outside_0_255(medmnist_classifier: Path) -> None:
    trained = load_trained(medmnist_classifier, device="cpu")
    scan = Volume(np.full((1, 28, 28, 28), 300.0, np.float32), np.eye(4), {"source_path": "ct.nii.gz"})
    with pytest.raises(MedvolError, match=r"ct\.nii\.gz: values span \[300, 300\].*0-255"):
        prepare_input(trained, scan)


def test_a_medmnist_file_needs_its_task() -> None:
    with pytest.raises(MedvolError, match=r"data\.task: medmnist-classification"):
        parse_config(
            {
                "data": {"task": "classification", "root": "adrenal.npz"},
                "model": {"name": "resnet10"},
                "loss": {"name": "cross_entropy"},
            }
        )


def test_a_run_folder_of_medvol_0_1_0_is_read_with_its_task(
    medmnist_classifier: Path, tmp_path: Path
) -> None:
    import shutil

    import yaml

    old = tmp_path / "old-run"
    shutil.copytree(medmnist_classifier, old)
    (old / "input.json").unlink()  # medvol 0.1.0 wrote none
    config = yaml.safe_load((old / "config.yaml").read_text())
    config["data"]["task"] = "classification"  # how 0.1.0 declared MedMNIST classifiers
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    trained = load_trained(old, device="cpu")
    assert isinstance(trained.task, MedMNISTTask)
    assert trained.input_spec == load_trained(medmnist_classifier, device="cpu").input_spec
