"""A trained run, loaded back for inference: the model and everything it was trained with.

``load_trained(run_dir)`` rebuilds the model from the run's ``config.yaml`` and
checkpoint, and the preprocessing and normaliser it was trained with (the
normaliser's fitted statistics come from ``normalizer.json``). Then:

- ``segment(trained, volume)`` maps one scan to a label map on the scan's
  **own** grid (same shape, same affine): preprocess → normalise →
  Gaussian-blended sliding windows (optionally averaged over axis flips) →
  probabilities mapped back through ``invert`` (linear) → argmax, optionally
  keeping the largest connected component of each class.
- ``classify(trained, images)`` gives class probabilities for a batch of
  model inputs already prepared as in training.
- ``classify_scan(trained, scan)`` gives one scan's class probabilities from a
  classifier trained on scan files: preprocess → normalise → centre-crop/pad
  to ``data.patch_size`` (``prepare_scan``), exactly as in training.
  MedMNIST-trained classifiers (``trained.medmnist``) saw ``uint8 / 255``
  arrays instead; ``medvol.predict`` has their input path.

The run's ``train.amp`` and ``train.channels_last`` are resolved for the
inference device and model exactly as training resolves them
(``medvol.engine.precision``), except that ``fp16`` off CUDA runs in fp32.

Every step is deterministic: the same scan and run give the same output.
"""

from __future__ import annotations

import itertools
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from medvol.config import ExperimentConfig, load_config
from medvol.engine.checkpoint import load_checkpoint
from medvol.engine.distributed import choose_device
from medvol.engine.precision import Precision, resolve_precision
from medvol.engine.validate import predict_volume
from medvol.errors import MedvolError
from medvol.io.medmnist import is_medmnist_file
from medvol.models import create_model
from medvol.transforms import Normalizer, PreprocessConfig, ZScore, crop_or_pad, invert, preprocess
from medvol.volume import Volume

Checkpoint = Literal["best", "last"]


@dataclass
class TrainedModel:
    """A run's model in eval mode with its preprocessing and fitted normaliser.

    Attributes:
        run_dir: the run folder it came from.
        config: the run's experiment config.
        model: the network, eval mode, on ``device``.
        device: where inference runs.
        preprocess: the grid scans are put on before the model sees them.
        normalizer: fitted intensity normaliser (segmentation, and classifiers
            trained on scan files), ``None`` for MedMNIST classifiers (uint8 / 255).
        checkpoint: ``"best"`` or ``"last"``; ``epoch`` is the epoch it holds.
        precision: the run's ``train.amp`` and ``train.channels_last``
            resolved for ``device`` and ``model`` (set on creation; with
            channels-last on, the model's weights are converted then).
    """

    run_dir: Path
    config: ExperimentConfig
    model: nn.Module
    device: torch.device
    preprocess: PreprocessConfig
    normalizer: Normalizer | None
    checkpoint: Checkpoint
    epoch: int
    precision: Precision = field(init=False)

    def __post_init__(self) -> None:
        amp, layout = self.config.train.amp, self.config.train.channels_last
        self.precision = resolve_precision(amp, layout, self.device, self.model, strict=False)
        self.precision.prepare_model(self.model)

    @property
    def task(self) -> str:
        return self.config.data.task

    @property
    def num_classes(self) -> int:
        return self.config.data.num_classes

    @property
    def medmnist(self) -> bool:
        """True for a classifier trained on a MedMNIST ``.npz`` (not on scan files)."""
        return is_medmnist(self.config)

    def autocast(self) -> AbstractContextManager[Any]:
        """Autocast as the run's ``train.amp`` resolves on this device (``auto``: bf16 where native)."""
        return self.precision.autocast(self.device)


@dataclass
class Segmentation:
    """A scan's segmentation on its own grid.

    Attributes:
        label: ``(1, X, Y, Z)`` uint8 class indices, the scan's shape and affine.
        probabilities: ``(K, X, Y, Z)`` float32 softmax probabilities on the
            same grid, when asked for.
    """

    label: Volume
    probabilities: Volume | None = None


def is_medmnist(config: ExperimentConfig) -> bool:
    """True when the run trains a classifier on a MedMNIST ``.npz`` (inputs ``uint8 / 255``)."""
    return config.data.task == "classification" and is_medmnist_file(config.data.root)


def load_trained(run_dir: str | Path, checkpoint: Checkpoint = "best", device: str = "auto") -> TrainedModel:
    """Load a run folder written by ``medvol train``.

    Args:
        run_dir: the run folder (holds ``config.yaml`` and ``checkpoints/``).
        checkpoint: ``"best"`` (selected on validation; falls back to
            ``"last"`` when the run never validated) or ``"last"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.

    Raises:
        MedvolError: the folder is not a finished-enough run (no config or
            checkpoint), naming what is missing.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise MedvolError(run_dir, "not a medvol run folder: config.yaml is missing")
    config = load_config(config_path)
    checkpoints = run_dir / "checkpoints"
    path = checkpoints / f"{checkpoint}.pt"
    if checkpoint == "best" and not path.is_file():
        path = checkpoints / "last.pt"
    if not path.is_file():
        raise MedvolError(run_dir, f"no checkpoint to load: {path.relative_to(run_dir)} is missing")
    chosen: Checkpoint = "best" if path.stem == "best" else "last"
    torch_device = choose_device(device, int(os.environ.get("LOCAL_RANK", "0")))  # torchrun: own GPU
    state = load_checkpoint(path, map_location=torch_device)
    model = create_model(config.model.name, **config.model.options).to(torch_device)
    model.load_state_dict(state["model"])
    model.eval()
    normalizer = None
    if not is_medmnist(config):
        stored = state.get("normalizer")
        normalizer = Normalizer.from_dict(stored) if stored else ZScore(per_scan=True)
    return TrainedModel(
        run_dir=run_dir,
        config=config,
        model=model,
        device=torch_device,
        preprocess=config.preprocess,
        normalizer=normalizer,
        checkpoint=chosen,
        epoch=int(state["progress"]["epoch"]),
    )


@torch.no_grad()
def segment(
    trained: TrainedModel,
    scan: Volume,
    *,
    flip_tta: bool = False,
    largest_component: bool = False,
    keep_probabilities: bool = False,
) -> Segmentation:
    """Segment one scan ``(C, X, Y, Z)``; the result is on the scan's own grid.

    Args:
        trained: from ``load_trained`` (a segmentation run).
        scan: the image as loaded by ``medvol.load``.
        flip_tta: average the probabilities over all 8 combinations of axis
            flips (8× the compute).
        largest_component: keep only the largest 26-connected component of
            each foreground class.
        keep_probabilities: also return the probabilities on the scan's grid.
    """
    if trained.task != "segmentation":
        raise MedvolError(trained.run_dir, "this run is a classifier; use classify()")
    _check_channels(trained, scan)
    image, _, record = preprocess(scan, None, trained.preprocess)
    assert trained.normalizer is not None
    image = trained.normalizer.transform(image)
    tensor = torch.from_numpy(np.ascontiguousarray(image.array, dtype=np.float32))[None].to(trained.device)
    patch = trained.config.data.patch_size or tuple(tensor.shape[2:])
    probabilities = _probabilities(trained, tensor, patch, flip_tta)[0].cpu().numpy()
    background = [1.0] + [0.0] * (trained.num_classes - 1)
    on_source = invert(Volume(probabilities, image.affine, {}), record, fill_value=background)
    label_array = np.argmax(on_source.array, axis=0).astype(np.uint8)
    if largest_component:
        label_array = keep_largest_components(label_array)
    meta = {"source_path": scan.meta.get("source_path"), "checkpoint": trained.checkpoint}
    label = Volume(label_array[None], scan.affine.copy(), meta)
    if not keep_probabilities:
        return Segmentation(label=label)
    return Segmentation(label, Volume(on_source.array.astype(np.float32), scan.affine.copy(), meta))


def _probabilities(
    trained: TrainedModel, tensor: torch.Tensor, patch: tuple[int, ...], flip_tta: bool
) -> torch.Tensor:
    """Softmax ``(1, K, X, Y, Z)``, averaged over axis flips with ``flip_tta``."""
    patch3 = (int(patch[0]), int(patch[1]), int(patch[2]))
    if not flip_tta:
        return predict_volume(trained.model, tensor, patch3, trained.autocast())
    flips = [axes for n in range(4) for axes in itertools.combinations((2, 3, 4), n)]
    total = torch.zeros(())
    for axes in flips:
        flipped = tensor.flip(axes) if axes else tensor
        out = predict_volume(trained.model, flipped, patch3, trained.autocast())
        total = total + (out.flip(axes) if axes else out)
    return total / len(flips)


def keep_largest_components(label: np.ndarray) -> np.ndarray:
    """Per foreground class, zero every 26-connected component but the largest."""
    result = label.copy()
    structure = np.ones((3, 3, 3), dtype=bool)
    for value in np.unique(label):
        if value == 0:
            continue
        components, count = ndimage.label(label == value, structure=structure)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        result[(components != 0) & (components != int(np.argmax(sizes)))] = 0
    return result


@torch.no_grad()
def classify(trained: TrainedModel, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Class probabilities ``(N, K)`` for images ``(N, C, X, Y, Z)`` float32 already scaled as in training."""
    if trained.task != "classification":
        raise MedvolError(trained.run_dir, "this run is a segmenter; use segment()")
    rows = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32))
        with trained.autocast():
            logits = trained.model(batch.to(trained.device)).float()
        rows.append(torch.softmax(logits, dim=1).cpu().numpy())
    if not rows:
        return np.zeros((0, trained.num_classes), dtype=np.float32)
    return np.concatenate(rows).astype(np.float32)


def _check_channels(trained: TrainedModel, scan: Volume) -> None:
    """Refuse a scan with another number of channels than the model takes."""
    expected = trained.config.model.options.get("in_channels", 1)
    if scan.num_channels != expected:
        raise MedvolError(
            scan.meta.get("source_path"),
            f"the model takes {expected} channel(s), the scan has {scan.num_channels}",
        )


def prepare_scan(trained: TrainedModel, scan: Volume) -> np.ndarray:
    """A scan as a file-trained classifier's input ``(C, X, Y, Z)`` float32.

    The training path of ``FileClassificationDataset``: preprocess with the
    run's config, normalise with its fitted normaliser, centre-crop/pad to
    ``data.patch_size`` (padding with the normalised scan's minimum).

    Raises:
        MedvolError: the run is not a file-trained classifier, or the scan has
            another number of channels than the model takes.
    """
    if trained.task != "classification":
        raise MedvolError(trained.run_dir, "this run is a segmenter; use segment()")
    shape = trained.config.data.patch_size
    if trained.medmnist or shape is None or trained.normalizer is None:
        raise MedvolError(
            trained.run_dir, "this classifier was trained on a MedMNIST .npz, not on scan files"
        )
    _check_channels(trained, scan)
    image, _, _ = preprocess(scan, None, trained.preprocess)
    image = trained.normalizer.transform(image)
    return crop_or_pad(image, shape).array.astype(np.float32)


def classify_scan(trained: TrainedModel, scan: Volume) -> np.ndarray:
    """Class probabilities ``(K,)`` float32 of one scan ``(C, X, Y, Z)``, for a file-trained classifier."""
    return classify(trained, prepare_scan(trained, scan)[np.newaxis])[0]
