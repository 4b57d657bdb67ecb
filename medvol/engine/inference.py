"""A trained run, loaded back for inference: the model and everything it was trained with.

``load_trained(run_dir)`` rebuilds the model from the run's ``config.yaml`` and
checkpoint, its task (``medvol.tasks``), the preprocessing and the fitted
normaliser it was trained with, and the input spec (``input.json``). Then:

- ``prepare_input(trained, scan)`` is the model input the run's task makes
  from one scan, exactly as training made it (every inference path uses it).
- ``segment(trained, volume)`` maps one scan to a label map on the scan's
  **own** grid (same shape, same affine): prepared input → Gaussian-blended
  sliding windows (optionally averaged over axis flips) → probabilities
  mapped back to the scan's grid (linear) → argmax, optionally keeping the
  largest connected component of each class.
- ``classify(trained, inputs)`` gives class probabilities for a batch of
  prepared inputs; ``classify_scan(trained, scan)`` for one scan.
- ``predict_volume(model, image, patch_size, autocast)`` is the sliding
  window itself, shared with the validation epoch.

The run's ``train.amp`` and ``train.channels_last`` are resolved for the
inference device and model exactly as training resolves them
(``medvol.engine.precision``), except that ``fp16`` off CUDA runs in fp32.

Every step is deterministic: the same scan and run give the same output.
"""

from __future__ import annotations

import itertools
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from medvol.config import ExperimentConfig
from medvol.engine.checkpoint import load_checkpoint
from medvol.engine.distributed import choose_device, launch_environment
from medvol.engine.precision import Precision, resolve_precision
from medvol.engine.run_folder import Checkpoint, InputSpec, RunFolder
from medvol.errors import MedvolError
from medvol.models import create_model
from medvol.tasks import InputRecipe, task_for
from medvol.transforms import Normalizer, PreprocessConfig
from medvol.volume import Volume

if TYPE_CHECKING:
    from medvol.tasks import ModelInput, Task

SLIDING_WINDOW_OVERLAP = 0.5
SLIDING_WINDOW_BATCH = 4
"""Windows per forward pass of the network."""

Engine = Literal["torch", "onnxruntime"]


@dataclass
class TrainedModel:
    """A run's model in eval mode with its task, preprocessing and fitted normaliser.

    Attributes:
        run: the run folder it came from.
        config: the run's experiment config.
        task: the run's task (``medvol.tasks``): prepares every model input.
        model: the network, eval mode, on ``device``: any module mapping
            images ``(B, C, X, Y, Z)`` float32 to logits (the one seam
            between medvol and what executes the network).
        device: where inference runs.
        recipe: what inputs are prepared with: the grid scans are put on
            (``preprocess``), the fitted intensity normaliser (``normalizer``;
            ``None`` for MedMNIST arrays, ``uint8 / 255``) and what the model
            takes (``input_spec``).
        checkpoint: ``"best"`` or ``"last"``; ``epoch`` is the epoch it holds.
        weights: the file the network came from (the checkpoint, or a model
            package's ``model.onnx``).
        engine: what runs the network: ``"torch"``, or ``"onnxruntime"``
            (``model`` is then a ``medvol.export.OnnxNetwork``, always fp32).
        precision: the run's ``train.amp`` and ``train.channels_last``
            resolved for ``device`` and ``model`` (set on creation; with
            channels-last on, the model's weights are converted then).
    """

    run: RunFolder
    config: ExperimentConfig
    task: Task
    model: nn.Module
    device: torch.device
    recipe: InputRecipe
    checkpoint: Checkpoint
    epoch: int
    weights: Path
    engine: Engine = "torch"
    precision: Precision = field(init=False)

    def __post_init__(self) -> None:
        if self.engine == "onnxruntime":
            self.precision = Precision("none", False, "ONNX Runtime runs the exported fp32 network")
            return
        amp, layout = self.config.train.amp, self.config.train.channels_last
        self.precision = resolve_precision(amp, layout, self.device, self.model, strict=False)
        self.precision.prepare_model(self.model)

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.recipe.preprocess

    @property
    def normalizer(self) -> Normalizer | None:
        return self.recipe.normalizer

    @property
    def input_spec(self) -> InputSpec:
        return self.recipe.spec

    @property
    def num_classes(self) -> int:
        return self.config.data.num_classes

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


def load_trained(run_dir: str | Path, checkpoint: Checkpoint = "best", device: str = "auto") -> TrainedModel:
    """Load a run folder written by ``medvol train``.

    Args:
        run_dir: the run folder (holds ``config.yaml`` and ``checkpoints/``).
        checkpoint: ``"best"`` (selected on validation; falls back to
            ``"last"`` when the run never validated) or ``"last"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``; under
            torchrun each rank takes its own GPU.

    Raises:
        MedvolError: the folder is not a finished-enough run (no config or
            checkpoint), naming what is missing.
    """
    run = RunFolder(run_dir)
    config = run.read_config()
    chosen, path = run.existing_checkpoint(checkpoint)
    try:
        torch_device = choose_device(device, launch_environment().local_rank)
    except RuntimeError as error:
        raise MedvolError(None, f"device {device}: {error}") from error
    state = load_checkpoint(path, map_location=torch_device)
    model = create_model(config.model.name, **config.model.options).to(torch_device)
    model.load_state_dict(state["model"])
    model.eval()
    task = task_for(config)
    return TrainedModel(
        run=run,
        config=config,
        task=task,
        model=model,
        device=torch_device,
        recipe=InputRecipe(
            config.preprocess, task.load_normalizer(state.get("normalizer")), run.read_input_spec()
        ),
        checkpoint=chosen,
        epoch=int(state["progress"]["epoch"]),
        weights=path,
    )


def prepare_input(trained: TrainedModel, scan: Volume) -> ModelInput:
    """``scan`` ``(C, X, Y, Z)`` as the run's model input, exactly as training prepared it."""
    return trained.task.prepare_input(trained.recipe, scan)


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
    from medvol.tasks import SegmentationTask

    task = trained.task
    if not isinstance(task, SegmentationTask):
        raise MedvolError(trained.run_dir, "this run is a classifier; use classify()")
    prepared = task.prepare_input(trained.recipe, scan)
    tensor = torch.from_numpy(np.ascontiguousarray(prepared.array))[None].to(trained.device)
    patch = trained.input_spec.patch_size or tuple(tensor.shape[2:])
    probabilities = _probabilities(trained, tensor, patch, flip_tta)[0].cpu().numpy()
    on_source = task.to_source_grid(probabilities, prepared, scan)
    label_array = np.argmax(on_source, axis=0).astype(np.uint8)
    if largest_component:
        label_array = keep_largest_components(label_array)
    meta = {"source_path": scan.meta.get("source_path"), "checkpoint": trained.checkpoint}
    label = Volume(label_array[None], scan.affine.copy(), meta)
    if not keep_probabilities:
        return Segmentation(label=label)
    return Segmentation(label, Volume(on_source.astype(np.float32), scan.affine.copy(), meta))


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


def predict_volume(
    model: nn.Module,
    image: torch.Tensor,
    patch_size: tuple[int, int, int],
    autocast: AbstractContextManager[Any],
) -> torch.Tensor:
    """Class probabilities ``(B, K, X, Y, Z)`` for images ``(B, C, X, Y, Z)``.

    Gaussian-weighted sliding windows of ``patch_size`` with half overlap (MONAI).
    An image smaller than the patch along an axis is first padded as training
    patches are (``medvol.data.dataset.random_patch``): centred, with each
    image's minimum, not MONAI's zeros (the mean of a z-scored scan), so the
    model sees at its borders what it was trained on.
    """
    from monai.inferers import sliding_window_inference

    padded, window = pad_like_training(image, patch_size)
    with autocast:
        logits = sliding_window_inference(
            padded,
            roi_size=patch_size,
            sw_batch_size=SLIDING_WINDOW_BATCH,
            predictor=model,
            overlap=SLIDING_WINDOW_OVERLAP,
            mode="gaussian",
        )
    assert isinstance(logits, torch.Tensor)
    return torch.softmax(logits[window].float(), dim=1)


def pad_like_training(
    image: torch.Tensor, patch_size: tuple[int, int, int]
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """``image`` ``(B, C, X, Y, Z)`` padded to at least ``patch_size``, and the window of the original.

    Padding is centred (one voxel more after than before when odd) and filled
    with each image's minimum over channels and voxels, as in training.
    """
    spatial = image.shape[2:]
    before = [max(0, (p - n + 1) // 2) for n, p in zip(spatial, patch_size, strict=True)]
    shape = [max(n, p) for n, p in zip(spatial, patch_size, strict=True)]
    window = (slice(None), slice(None), *(slice(b, b + n) for b, n in zip(before, spatial, strict=True)))
    if shape == list(spatial):
        return image, window
    fill = image.amin(dim=(1, 2, 3, 4), keepdim=True)
    padded = fill.expand(*image.shape[:2], *shape).clone()
    padded[window] = image
    return padded, window


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
def classify(trained: TrainedModel, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Class probabilities ``(N, K)`` for prepared inputs ``(N, C, X, Y, Z)`` float32 (``prepare_input``).

    Inputs ``(N, M, C, X, Y, T)`` are M clips per video (``data.clip.eval_clips``):
    the model's logits are averaged over each video's M clips before the softmax.
    """
    if trained.task.output != "classification":
        raise MedvolError(trained.run_dir, "this run is a segmenter; use segment()")
    clips = inputs.shape[1] if inputs.ndim == 6 else 1
    flat = inputs.reshape(-1, *inputs.shape[-4:])
    step = max(1, batch_size // clips) * clips  # whole videos per batch
    rows = []
    for start in range(0, len(flat), step):
        batch = torch.from_numpy(np.ascontiguousarray(flat[start : start + step], dtype=np.float32))
        with trained.autocast():
            logits = trained.model(batch.to(trained.device)).float()
        logits = logits.reshape(-1, clips, logits.shape[-1]).mean(dim=1)
        rows.append(torch.softmax(logits, dim=1).cpu().numpy())
    if not rows:
        return np.zeros((0, trained.num_classes), dtype=np.float32)
    return np.concatenate(rows).astype(np.float32)


def classify_scan(trained: TrainedModel, scan: Volume) -> np.ndarray:
    """Class probabilities ``(K,)`` float32 of one scan ``(C, X, Y, Z)``."""
    return classify(trained, prepare_input(trained, scan).array[np.newaxis])[0]
