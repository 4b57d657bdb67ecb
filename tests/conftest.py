"""Shared fixtures: the real data in ../shared/data, and its absence policy.

A user's fresh clone has no ../shared: tests that need it skip with a reason.
Under CI (``CI=true``) its absence is a failure, so real-data checks never
silently stop running.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HIPPOCAMPUS_TRAIN = ("001", "004", "006", "007")
HOLDOUT_CASE = "hippocampus_024.nii.gz"


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


# Two tiny trained runs and a model package of the segmenter, shared by tests/test_export.py and
# tests/test_infer_without_torch.py (trained once per session).


@pytest.fixture(scope="session")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny U-Net trained for one epoch on 4 bundled hippocampus cases at 4 mm, flipping left-right."""
    from medvol import demo
    from medvol.cli import main
    from tests.shared_samples import write_config

    root = tmp_path_factory.mktemp("segmenter")
    samples = demo.sample("hippocampus/train")
    for case in HIPPOCAMPUS_TRAIN:
        for kind in ("images", "labels"):
            target = root / "data" / kind / f"hippocampus_{case}.nii.gz"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(samples / kind / target.name, target)
    config = demo.hippocampus_segmenter(
        root / "data",
        epochs=1,
        output_dir=root / "runs",
        name="seg",
        patch_size=(16, 16, 16),
        spacing_mm=(4.0, 4.0, 4.0),
        split={"n_splits": 2},
    )
    config["preprocess"]["pad_to_shape"] = [16, 16, 16]
    config["augment"] = {"flip_axes": [0], "affine_prob": 0.0}  # X is left-right (orientation RAS)
    assert main(["train", str(write_config(root / "seg.yaml", config))]) == 0
    return root / "runs" / "seg"


@pytest.fixture(scope="session")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ResNet (channels-last on the CPU) trained for one epoch on 40 AdrenalMNIST3D cases."""
    from medvol import demo
    from medvol.cli import main
    from tests.shared_samples import write_config

    root = tmp_path_factory.mktemp("classifier")
    arrays = np.load(demo.sample("adrenalmnist3d.npz"))
    subset = {}
    for split, count in {"train": 24, "val": 16, "test": 8}.items():
        labels = arrays[f"{split}_labels"][:, 0]
        chosen = np.sort(np.concatenate([np.flatnonzero(labels == c)[: count // 2] for c in (0, 1)]))
        subset[f"{split}_images"] = arrays[f"{split}_images"][chosen]
        subset[f"{split}_labels"] = arrays[f"{split}_labels"][chosen]
    np.savez(root / "adrenal.npz", **subset)
    config = demo.medmnist_classifier(
        root / "adrenal.npz", epochs=1, output_dir=root / "runs", name="clf", widths=4, batch_size=8
    )
    assert main(["train", str(write_config(root / "clf.yaml", config))]) == 0
    return root / "runs" / "clf"


@pytest.fixture(scope="session")
def seg_package(segmenter: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The segmenter exported as a model package (``medvol export``)."""
    from medvol.cli import main

    pytest.importorskip("onnx")
    out = tmp_path_factory.mktemp("packages") / "seg"
    assert main(["export", str(segmenter), str(out)]) == 0
    return out
