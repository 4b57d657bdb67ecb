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

The network is a callable on numpy arrays (images ``(B, C, X, Y, Z)`` float32
in, logits out): ``medvol.engine.torch_network.TorchNetwork`` for a run,
``medvol.export.runtime.OnnxNetwork`` for a model package. Everything else
(preparing inputs, the sliding windows of ``medvol.engine.windows``, mapping
back, the argmax) is numpy, SimpleITK and scipy, the same for both engines:
this module imports no torch, and predicting from a model package needs none
(``medvol[infer]``). ``load_trained`` imports torch when it is called.

Every step is deterministic: the same scan and run give the same output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import ndimage
from scipy.special import softmax

from medvol.config import ExperimentConfig
from medvol.engine.run_folder import Checkpoint, InputSpec, RunFolder
from medvol.engine.windows import Network, flip_averaged
from medvol.errors import MedvolError
from medvol.tasks import InputRecipe, task_for
from medvol.transforms import Normalizer, PreprocessConfig
from medvol.volume import Volume

if TYPE_CHECKING:
    from medvol.tasks import ModelInput, Task

Engine = Literal["torch", "onnxruntime"]


@dataclass
class TrainedModel:
    """A run's model in eval mode with its task, preprocessing and fitted normaliser.

    Attributes:
        run: the run folder it came from.
        config: the run's experiment config.
        task: the run's task (``medvol.tasks``): prepares every model input.
        network: images ``(B, C, X, Y, Z)`` float32 → logits, numpy arrays
            (the one seam between medvol and what executes the network):
            ``medvol.engine.torch_network.TorchNetwork`` (its ``module``,
            ``device`` and resolved ``precision``) or
            ``medvol.export.runtime.OnnxNetwork`` (always fp32, on the CPU).
        recipe: what inputs are prepared with: the grid scans are put on
            (``preprocess``), the fitted intensity normaliser (``normalizer``;
            ``None`` for MedMNIST arrays, ``uint8 / 255``) and what the model
            takes (``input_spec``).
        checkpoint: ``"best"`` or ``"last"``; ``epoch`` is the epoch it holds.
        weights: the file the network came from (the checkpoint, or a model
            package's ``model.onnx``).
        engine: what runs the network: ``"torch"`` or ``"onnxruntime"``.
        device: where the network runs (``"cpu"``, ``"cuda:0"``...).
    """

    run: RunFolder
    config: ExperimentConfig
    task: Task
    network: Network
    recipe: InputRecipe
    checkpoint: Checkpoint
    epoch: int
    weights: Path
    engine: Engine = "torch"
    device: str = "cpu"

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
    from medvol.engine.torch_network import load_network

    run = RunFolder(run_dir)
    config = run.read_config()
    chosen, path = run.existing_checkpoint(checkpoint)
    network, state = load_network(config, path, device)
    task = task_for(config)
    return TrainedModel(
        run=run,
        config=config,
        task=task,
        network=network,
        recipe=InputRecipe(
            config.preprocess, task.load_normalizer(state.get("normalizer")), run.read_input_spec()
        ),
        checkpoint=chosen,
        epoch=int(state["progress"]["epoch"]),
        weights=path,
        device=str(network.device),
    )


def prepare_input(trained: TrainedModel, scan: Volume) -> ModelInput:
    """``scan`` ``(C, X, Y, Z)`` as the run's model input, exactly as training prepared it."""
    return trained.task.prepare_input(trained.recipe, scan)


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
        flip_tta: average the probabilities over every combination of flips of
            the axes the run was trained to flip (:func:`tta_flip_axes`; ``2**k``
            the compute for ``k`` axes).
        largest_component: keep only the largest 26-connected component of
            each foreground class.
        keep_probabilities: also return the probabilities on the scan's grid.
    """
    from medvol.tasks import SegmentationTask

    task = trained.task
    if not isinstance(task, SegmentationTask):
        raise MedvolError(trained.run_dir, "this run is a classifier; use classify()")
    prepared = task.prepare_input(trained.recipe, scan)
    image = np.ascontiguousarray(prepared.array, dtype=np.float32)[np.newaxis]
    x, y, z = trained.input_spec.patch_size or image.shape[2:]
    flip_axes = tta_flip_axes(trained) if flip_tta else ()
    probabilities = flip_averaged(trained.network, image, (int(x), int(y), int(z)), flip_axes)[0]
    on_source = task.to_source_grid(probabilities, prepared, scan)
    label_array = np.argmax(on_source, axis=0).astype(np.uint8)
    if largest_component:
        label_array = keep_largest_components(label_array)
    meta = {"source_path": scan.meta.get("source_path"), "checkpoint": trained.checkpoint}
    label = Volume(label_array[None], scan.affine.copy(), meta)
    if not keep_probabilities:
        return Segmentation(label=label)
    return Segmentation(label, Volume(on_source.astype(np.float32), scan.affine.copy(), meta))


def refuse_segmentation_options(trained: TrainedModel, options: dict[str, bool]) -> None:
    """Raise when a classifier is given options that only a segmenter has (``{"--flag": on}``)."""
    used = [flag for flag, on in options.items() if on]
    if trained.task.output == "classification" and used:
        raise MedvolError(
            trained.run_dir, f"{', '.join(used)} apply to segmentation runs; this is a classifier"
        )


def tta_flip_axes(trained: TrainedModel) -> tuple[int, ...]:
    """The voxel axes flip TTA mirrors: those the run was trained to flip (``augment.flip_axes``).

    Raises:
        MedvolError: the run was trained without flips. Mirroring its inputs would
            show it orientations it never saw and, for direction-bearing labels
            (left/right organs, hippocampus anterior/posterior), swap their meaning.
    """
    augment = trained.config.augment
    if augment is None or augment.flip_prob <= 0 or not augment.flip_axes:
        raise MedvolError(
            trained.run_dir,
            "--flip-tta mirrors the axes the model was trained to flip, and this run was trained "
            "without flips (augment.flip_axes is empty or augment.flip_prob is 0); drop --flip-tta, "
            "or train with the axes whose flips keep the labels' meaning (e.g. augment.flip_axes: [0], "
            "left-right after preprocess.orientation: RAS)",
        )
    return tuple(sorted(set(augment.flip_axes)))


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
        logits = trained.network(np.ascontiguousarray(flat[start : start + step], dtype=np.float32))
        rows.append(softmax(logits.reshape(-1, clips, logits.shape[-1]).mean(axis=1), 1))
    if not rows:
        return np.zeros((0, trained.num_classes), dtype=np.float32)
    return np.concatenate(rows).astype(np.float32)


def classify_scan(trained: TrainedModel, scan: Volume) -> np.ndarray:
    """Class probabilities ``(K,)`` float32 of one scan ``(C, X, Y, Z)``."""
    return classify(trained, prepare_input(trained, scan).array[np.newaxis])[0]
