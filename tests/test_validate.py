"""Sliding-window inference pads small images the way training patches are padded."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from medvol.data.dataset import random_patch
from medvol.engine.torch_network import TorchNetwork
from medvol.engine.windows import pad_like_training, predict_volume
from medvol.models import create_model


def test_padding_matches_training_patches() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 9, 14, 5)).astype(np.float32)
    label = np.zeros((1, 9, 14, 5), np.uint8)
    patch, _ = random_patch(image, label, (12, 14, 8), rng)  # larger than the image: all of it, padded
    padded, window = pad_like_training(image[None], (12, 14, 8))
    np.testing.assert_array_equal(padded[0], patch)
    np.testing.assert_array_equal(padded[window][0], image)
    assert float(padded[0, :, 0].max()) == float(image.min())  # filled with the minimum, not zeros


def test_prediction_on_a_small_image_is_the_model_on_its_padded_patch() -> None:
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=3, base_filters=4, num_levels=3).eval()
    image = (torch.randn(1, 1, 13, 10, 15) * 3 + 5).numpy()
    padded, window = pad_like_training(image, (16, 16, 16))
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(padded)), dim=1).numpy()[window]
    network = TorchNetwork(model, torch.device("cpu"), nullcontext())
    predicted = predict_volume(network, image, (16, 16, 16))
    assert predicted.shape == (1, 3, 13, 10, 15)
    np.testing.assert_allclose(predicted, expected, atol=1e-5, rtol=1e-5)
