"""``medvol export --int8``: the package's network quantised to int8, calibrated on training cases.

Post-training static quantisation by ONNX Runtime
(``onnxruntime.quantization.quantize_static``): QDQ format (QuantizeLinear /
DequantizeLinear pairs around each quantised operator, which ONNX Runtime
fuses into integer kernels), weights int8 per output channel, activations
uint8 per tensor, their ranges from MinMax calibration.

Calibration inputs are ``CALIBRATION_CASES`` cases of the run's **training**
split, drawn with ``CALIBRATION_SEED`` and prepared exactly as inference
prepares them (a segmenter's sliding windows, up to ``WINDOWS_PER_CASE`` of
each case, drawn with the same seed; a classifier's whole input). Validation
and test cases are never read: they stay held out for measuring what
quantisation costs (``benchmarks/bench_quantize.py``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvol.errors import MedvolError
from medvol.export.runtime import OnnxNetwork, import_onnxruntime, open_session
from medvol.logs import get_logger

if TYPE_CHECKING:
    from medvol.engine.inference import TrainedModel

logger = get_logger(__name__)

CALIBRATION_CASES = 16
"""Training cases whose inputs calibrate the activation ranges (all of them when the run has fewer)."""
CALIBRATION_SEED = 0
"""Seed of the draw of calibration cases and windows (``numpy.random.default_rng``)."""
WINDOWS_PER_CASE = 2
"""A segmenter's sliding windows kept per calibration case (drawn when a case has more).

ONNX Runtime holds every activation of every calibration input while it computes the
ranges, so the inputs are few: at most ``CALIBRATION_CASES × WINDOWS_PER_CASE``. (Its
``CalibMaxIntermediateOutputs`` option, which would bound that memory, drops the
collected activations without using them in onnxruntime 1.32, so it is not used.)
"""
QDQ_MIN_OPSET = 13
"""Per-channel QuantizeLinear / DequantizeLinear (their ``axis``) need ONNX opset 13 or newer."""
METHOD = {
    "method": "post-training static quantisation (onnxruntime.quantization.quantize_static)",
    "format": "QDQ",
    "weights": "int8, symmetric, per output channel",
    "activations": "uint8, asymmetric, per tensor",
    "calibration_method": "MinMax",
}


@dataclass(frozen=True)
class Calibration:
    """What calibrates the quantised network.

    Attributes:
        case_ids: the training cases used (``train-NNNNN``: a MedMNIST training index).
        inputs: network inputs ``(B, C, X, Y, Z)`` float32, as inference feeds them.
        description: what one input is, in words (recorded in the spec).
    """

    case_ids: list[str]
    inputs: list[np.ndarray]
    description: str


def calibration_data(
    trained: TrainedModel, count: int = CALIBRATION_CASES, seed: int = CALIBRATION_SEED
) -> Calibration:
    """``count`` training cases of ``trained``'s run, drawn with ``seed``, as network inputs.

    Raises:
        MedvolError: ``count`` below 1; the run's training data cannot be read
            (e.g. ``data.root`` moved since training), naming what is missing.
    """
    from medvol.tasks import MedMNISTTask

    if count < 1:
        raise MedvolError(None, f"--calibration-cases must be at least 1, got {count}")
    if isinstance(trained.task, MedMNISTTask):
        return medmnist_calibration(trained, count, seed)
    return scan_calibration(trained, count, seed)


def draw(ids: list[str], count: int, seed: int) -> list[str]:
    """``count`` of ``ids`` (all when fewer), drawn without replacement with ``seed``, in id order."""
    chosen = np.random.default_rng(seed).choice(len(ids), size=min(count, len(ids)), replace=False)
    return sorted(ids[i] for i in chosen)


def medmnist_calibration(trained: TrainedModel, count: int, seed: int) -> Calibration:
    """Volumes of the ``train`` split of the run's MedMNIST ``.npz`` (``uint8 / 255``, one per input)."""
    from medvol.io.medmnist import load_medmnist
    from medvol.transforms.inputs import medmnist_input

    root = trained.config.data.root
    if not root.is_file():
        raise MedvolError(root, "not found: int8 calibration reads the run's training volumes from data.root")
    images = load_medmnist(root)["train"].images
    ids = draw([f"train-{index:05d}" for index in range(len(images))], count, seed)
    inputs = [medmnist_input(images[int(case_id.removeprefix("train-"))])[np.newaxis] for case_id in ids]
    return Calibration(ids, inputs, f"one training volume (1, 1, {', '.join(map(str, images.shape[1:4]))})")


def scan_calibration(trained: TrainedModel, count: int, seed: int) -> Calibration:
    """Training cases of the run's ``split.json``, found in ``data.root`` by file name and prepared as
    for inference; no other case's images are read."""
    from medvol.data.cases import discover, load_images
    from medvol.engine.inference import prepare_input

    root = trained.config.data.root
    if not root.exists():
        raise MedvolError(root, "not found: int8 calibration reads the run's training cases from data.root")
    ids = draw(trained.run.split_ids("train"), count, seed)
    _, cases, _ = discover(root)
    by_id = {case.case_id: case for case in cases if case.images}
    missing = [case_id for case_id in ids if case_id not in by_id]
    if missing:
        raise MedvolError(root, f"training case(s) {', '.join(missing[:3])} not found for int8 calibration")
    inputs: list[np.ndarray] = []
    for case_id in ids:
        windows = network_inputs(trained, prepare_input(trained, load_images(by_id[case_id])).array)
        kept = np.random.default_rng(seed).choice(
            len(windows), min(WINDOWS_PER_CASE, len(windows)), replace=False
        )
        inputs.extend(windows[i] for i in sorted(kept))
    segmenter = trained.task.output == "segmentation"
    described = f"a sliding window of a case (up to {WINDOWS_PER_CASE} per case)" if segmenter else "one case"
    return Calibration(ids, inputs, described)


def network_inputs(trained: TrainedModel, prepared: np.ndarray) -> list[np.ndarray]:
    """What inference feeds the network for one prepared input: a segmenter's sliding windows
    ``(1, C, *patch)`` over ``prepared`` ``(C, X, Y, Z)`` padded as in training; a classifier's
    ``(1, C, X, Y, Z)``, or a clip classifier's clips ``(K, C, X, Y, T)`` as they are."""
    import itertools

    from medvol.engine.windows import SLIDING_WINDOW_OVERLAP, pad_like_training, window_starts

    if trained.task.output != "segmentation":
        return [prepared if prepared.ndim == 5 else prepared[np.newaxis]]
    patch = trained.input_spec.patch_size
    assert patch is not None
    padded, _ = pad_like_training(prepared[np.newaxis], patch)
    starts = [
        window_starts(n, p, SLIDING_WINDOW_OVERLAP) for n, p in zip(padded.shape[2:], patch, strict=True)
    ]
    return [
        np.ascontiguousarray(padded[:, :, x : x + patch[0], y : y + patch[1], z : z + patch[2]])
        for x, y, z in itertools.product(*starts)
    ]


def quantize_network(fp32: Path, int8: Path, calibration: Calibration, opset: int, input_name: str) -> float:
    """Quantise the ONNX network ``fp32`` into ``int8`` (see the module docstring).

    Returns:
        The largest |logit difference| between the two networks on the first
        calibration input (recorded; not a held-out measure of the cost).

    Raises:
        MedvolError: an opset too old for per-channel QDQ; ONNX Runtime cannot
            quantise the network or run the quantised one.
    """
    if opset < QDQ_MIN_OPSET:
        raise MedvolError(
            fp32, f"int8 needs ONNX opset {QDQ_MIN_OPSET} or newer (per-channel QDQ), not {opset}"
        )
    ort = import_onnxruntime()
    try:
        from onnxruntime import quantization
    except ImportError as error:
        raise MedvolError(None, f"onnxruntime {ort.__version__} has no onnxruntime.quantization") from error
    try:
        with quiet_quantizer():
            quantization.quantize_static(
                str(fp32),
                str(int8),
                CalibrationReader(input_name, calibration.inputs),
                quant_format=quantization.QuantFormat.QDQ,
                per_channel=True,
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax,
            )
    except Exception as error:  # onnxruntime raises its own and plain exception types
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        problem = f"ONNX Runtime {ort.__version__} could not quantise the network ({first})"
        raise MedvolError(fp32, problem) from error
    return compare(fp32, int8, calibration.inputs[0])


class CalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader``: the calibration inputs one by one."""

    def __init__(self, name: str, inputs: list[np.ndarray]) -> None:
        self.name = name
        self.inputs: Iterator[np.ndarray] = iter(inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        array = next(self.inputs, None)
        return None if array is None else {self.name: array}


def compare(fp32: Path, int8: Path, batch: np.ndarray) -> float:
    """Largest |logit difference| of the int8 network against the fp32 one on ``batch``.

    Raises:
        MedvolError: ONNX Runtime cannot open or run the int8 network, or its logits
            have another shape or are not finite.
    """
    expected = OnnxNetwork(open_session(fp32))(batch)
    try:
        logits = OnnxNetwork(open_session(int8))(batch)
    except MedvolError:
        raise
    except Exception as error:  # onnxruntime's own exception types
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise MedvolError(int8, f"ONNX Runtime cannot run the int8 network ({first})") from error
    if logits.shape != expected.shape or not np.all(np.isfinite(logits)):
        raise MedvolError(int8, f"the int8 network gives logits {logits.shape} that are not usable")
    return float(np.max(np.abs(logits - expected)))


def quantization_record(calibration: Calibration, count: int, seed: int, difference: float) -> dict[str, Any]:
    """The spec's ``model.quantization``: method, calibration cases and the in-sample logit difference."""
    import onnxruntime

    return {
        **METHOD,
        "onnxruntime": onnxruntime.__version__,
        "calibration": {
            "split": "train",
            "cases_requested": count,
            "seed": seed,
            "case_ids": calibration.case_ids,
            "inputs": len(calibration.inputs),
            "input": calibration.description,
        },
        "max_abs_logit_difference_on_calibration": difference,
    }


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    """Silence the quantiser's logging (advice, notes on weights it leaves in float) while it runs."""
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(level)
