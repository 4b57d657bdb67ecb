"""medvol's numpy sliding windows and resizing compute what the MONAI calls they replace computed.

``medvol.engine.windows`` (both engines) against
``monai.inferers.sliding_window_inference(mode="gaussian")``, and
``medvol.transforms.inputs.resize`` against ``monai.transforms.Resize(mode="trilinear",
anti_aliasing=True)``, on real scans prepared as medvol prepares them.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.transforms import Resize

from medvol import demo
from medvol.engine.torch_network import TorchNetwork
from medvol.engine.windows import (
    SLIDING_WINDOW_BATCH,
    SLIDING_WINDOW_OVERLAP,
    flip_averaged,
    predict_volume,
    window_starts,
)
from medvol.io import load
from medvol.models import create_model
from medvol.transforms import PreprocessConfig, ZScore
from medvol.transforms.inputs import medmnist_input, prepare_image, resize
from tests.conftest import HOLDOUT_CASE


@pytest.fixture(scope="module")
def scan() -> np.ndarray:
    """A hippocampus MRI at 1 mm, z-scored: ``(1, 1, X, Y, Z)`` float32."""
    volume = load(demo.sample("hippocampus/holdout/images") / HOLDOUT_CASE)
    image, _, _ = prepare_image(volume, None, PreprocessConfig(spacing_mm=None), ZScore().fit([volume]))
    return image.array[np.newaxis]


@pytest.mark.parametrize(
    "patch",
    [(16, 16, 16), (24, 40, 16), (36, 20, 12)],
    ids=["cubic", "anisotropic", "nearly-whole-x"],
)
def test_windows_match_monai(scan: np.ndarray, patch: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = create_model("unet", **demo.unet_options()).eval()
    with torch.no_grad():
        logits = sliding_window_inference(
            torch.from_numpy(scan),
            roi_size=patch,
            sw_batch_size=SLIDING_WINDOW_BATCH,
            predictor=model,
            overlap=SLIDING_WINDOW_OVERLAP,
            mode="gaussian",
        )
    assert isinstance(logits, torch.Tensor)
    expected = torch.softmax(logits, dim=1).numpy()
    probabilities = predict_volume(TorchNetwork(model, torch.device("cpu"), nullcontext()), scan, patch)
    assert probabilities.shape == expected.shape == (1, 3, *scan.shape[2:])
    assert np.abs(probabilities - expected).max() <= 1e-5


def test_window_starts_cover_the_axis_and_end_at_its_border() -> None:
    assert window_starts(16, 16, 0.5) == [0]
    assert window_starts(35, 16, 0.5) == [0, 8, 16, 19]
    assert window_starts(17, 16, 0.5) == [0, 1]
    assert window_starts(20, 3, 0.9) == list(range(18))  # the step is at least one voxel


@pytest.mark.parametrize(
    ("crop", "shape"),
    [
        ((slice(None), slice(None), slice(None)), (28, 28, 28)),
        ((slice(3, 40), slice(0, 64), slice(9, 30)), (28, 20, 33)),
    ],
    ids=["down", "down-and-up"],
)
def test_resize_matches_monai(crop: tuple[slice, ...], shape: tuple[int, int, int]) -> None:
    """A real scan (the hippocampus MRI scaled to MedMNIST's 0–255) to a classifier's input shape."""
    volume = load(demo.sample("hippocampus/holdout/images") / HOLDOUT_CASE).array[0]
    scaled = np.round(255 * volume / volume.max())
    array = medmnist_input(scaled[crop])
    monai = Resize(shape, mode="trilinear", anti_aliasing=True)(torch.from_numpy(array))
    expected = np.clip(np.asarray(monai, dtype=np.float32), 0.0, 1.0)
    resized = resize(array, shape)
    assert resized.shape == expected.shape == (1, *shape) and resized.dtype == np.float32
    assert np.abs(resized - expected).max() <= 1e-5


def test_flip_tta_mirrors_only_the_axes_it_is_given(scan: np.ndarray) -> None:
    """A left-right-only TTA is the mean of the plain and the X-mirrored prediction; Y and Z stay put."""
    torch.manual_seed(0)
    model = create_model("unet", **demo.unet_options()).eval()
    network = TorchNetwork(model, torch.device("cpu"), nullcontext())
    patch = (16, 16, 16)
    plain = predict_volume(network, scan, patch)
    mirrored = np.flip(predict_volume(network, np.flip(scan, 2), patch), 2)
    np.testing.assert_allclose(flip_averaged(network, scan, patch, (0,)), (plain + mirrored) / 2, atol=1e-6)
    np.testing.assert_array_equal(flip_averaged(network, scan, patch), plain)
    all_axes = flip_averaged(network, scan, patch, (0, 1, 2))
    assert np.abs(all_axes - (plain + mirrored) / 2).max() > 1e-3  # eight orientations differ from two
