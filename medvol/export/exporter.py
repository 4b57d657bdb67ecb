"""``medvol export RUN OUT``: a run's network as ONNX with everything needed to predict as medvol does.

The network is exported by torch's ``torch.export``-based ONNX exporter
(``dynamo=True``, the exporter torch maintains; the TorchScript one is
deprecated), checked with ``onnx.checker``, and run once by ONNX Runtime on a
random batch whose logits must agree with torch's. With ``int8`` the checked
network is then quantised by ONNX Runtime, calibrated on training cases
(``medvol.export.quantize``). The package is written into a temporary folder
beside ``OUT`` and renamed into place, so ``OUT`` is either absent or whole.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvol.engine.run_folder import Checkpoint
from medvol.errors import MedvolError
from medvol.export.package import FORMAT, FORMAT_VERSION, PackageFolder, preprocess_record
from medvol.export.quantize import (
    CALIBRATION_CASES,
    CALIBRATION_SEED,
    Calibration,
    calibration_data,
    quantization_record,
    quantize_network,
)
from medvol.export.runtime import OnnxNetwork, import_onnxruntime, open_session
from medvol.io.atomic import file_sha256, host_tag, write_json
from medvol.logs import get_logger

if TYPE_CHECKING:
    from medvol.engine.inference import TrainedModel

logger = get_logger(__name__)

OPSET = 18
"""ONNX opset of exported networks (the lowest the torch.export-based exporter writes natively)."""
INPUT_NAME, OUTPUT_NAME = "image", "logits"
EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
EXPORT_TOLERANCE = 1e-4
"""Largest |logit difference| between ONNX Runtime and torch accepted when exporting."""


@dataclass(frozen=True)
class ExportCheck:
    """ONNX Runtime against torch on one random batch: the shape tried and the largest |logit difference|."""

    shape: tuple[int, ...]
    max_abs_logit_difference: float


def export_run(
    run_dir: str | Path,
    out: str | Path,
    checkpoint: Checkpoint = "best",
    overwrite: bool = False,
    int8: bool = False,
    calibration_cases: int = CALIBRATION_CASES,
) -> Path:
    """Write the model package of ``run_dir`` to ``out`` (see ``medvol.export.package``).

    Args:
        int8: quantise the network to int8 (``medvol.export.quantize``),
            calibrated on ``calibration_cases`` training cases of the run.

    Raises:
        MedvolError: not a run folder or no checkpoint; ``out`` exists (without
            ``overwrite``); the export or its check against torch failed; with
            ``int8``, the training cases cannot be read or the quantisation failed.
    """
    from medvol.engine.inference import load_trained

    out = Path(out)
    if out.exists() and not overwrite:
        raise MedvolError(out, "already exists; choose another folder or pass --overwrite")
    missing = [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MedvolError(None, f"medvol export needs {', '.join(missing)}: pip install 'medvol[export]'")
    trained = load_trained(run_dir, checkpoint, device="cpu")
    calibration = calibration_data(trained, calibration_cases, CALIBRATION_SEED) if int8 else None
    temporary = out.with_name(f".{out.name}.tmp-{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        temporary.mkdir(parents=True)
        write_package(trained, PackageFolder(temporary), calibration, calibration_cases)
        replace_folder(temporary, out)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return out


def write_package(
    trained: TrainedModel,
    package: PackageFolder,
    calibration: Calibration | None = None,
    calibration_cases: int = CALIBRATION_CASES,
) -> None:
    """The network (quantised with ``calibration``), its check, the config, the model card and the
    spec (last) into ``package``."""
    fp32 = package.path / "model-fp32.onnx" if calibration else package.network
    export_network(trained, fp32)
    check = check_network(trained, fp32)
    quantization = None
    if calibration is not None:
        difference = quantize_network(fp32, package.network, calibration, OPSET, INPUT_NAME)
        quantization = quantization_record(calibration, calibration_cases, CALIBRATION_SEED, difference)
        fp32.unlink()
    shutil.copyfile(trained.run.config, package.config)
    package.card.write_text(model_card(trained))
    write_json(package.spec, package_spec(trained, package, check, quantization), allow_nan=False)


def export_network(trained: TrainedModel, path: Path) -> None:
    """The run's torch network as ONNX at ``path``: dynamic batch, and dynamic X, Y, Z for a segmenter."""
    import onnx
    import torch

    example = torch.from_numpy(example_batch(trained, batch=2))
    auto = torch.export.Dim.AUTO
    axes = {0: auto, 2: auto, 3: auto, 4: auto} if trained.task.output == "segmentation" else {0: auto}
    try:
        with quiet_exporter():
            program = torch.onnx.export(
                torch_module(trained),
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=OPSET,
                dynamo=True,
                dynamic_shapes=[axes],
                verbose=False,
            )
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        problem = f"torch could not export the network to ONNX ({first_line})"
        raise MedvolError(trained.run_dir, problem) from error
    assert program is not None
    proto = program.model_proto
    name_axes(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as error:
        raise MedvolError(path, f"the exported network fails onnx.checker ({error})") from error
    onnx.save(proto, path)


def name_axes(proto: Any) -> None:
    """Name the dynamic axes of the network's input ``batch``, ``x``, ``y``, ``z``, and the output's batch."""
    names = ["batch", "channels", "x", "y", "z"]
    for dim, name in zip(proto.graph.input[0].type.tensor_type.shape.dim, names, strict=True):
        if dim.HasField("dim_param"):
            dim.dim_param = name
    output_batch = proto.graph.output[0].type.tensor_type.shape.dim[0]
    if output_batch.HasField("dim_param"):
        output_batch.dim_param = "batch"


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's warnings about torch internals (deprecations, absent torchvision ops)."""
    torch_onnx = logging.getLogger("torch.onnx")
    level = torch_onnx.level
    torch_onnx.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_onnx.setLevel(level)


def check_network(trained: TrainedModel, path: Path) -> ExportCheck:
    """Run the exported network on a random batch of another batch size and compare with torch.

    Raises:
        MedvolError: a logit differs by more than ``EXPORT_TOLERANCE``.
    """
    import torch

    batch = example_batch(trained, batch=3)
    session = open_session(path)
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
    with torch.no_grad():
        expected = torch_module(trained)(torch.from_numpy(batch)).float().numpy()
    if logits.shape != expected.shape:
        raise MedvolError(path, f"ONNX Runtime gives logits {logits.shape}, torch {expected.shape}")
    difference = float(np.max(np.abs(logits - expected)))
    if not difference <= EXPORT_TOLERANCE:
        raise MedvolError(
            path,
            f"ONNX Runtime's logits differ from torch's by up to {difference:.3g} "
            f"(more than {EXPORT_TOLERANCE:g}): the export is not faithful",
        )
    return ExportCheck(tuple(batch.shape), difference)


def with_onnxruntime(trained: TrainedModel, threads: int | None = None) -> TrainedModel:
    """``trained``, its network exported and checked as ``medvol export`` does, run by ONNX Runtime."""
    import_onnxruntime()
    if trained.device != "cpu":
        raise MedvolError(None, f"ONNX Runtime runs on the CPU here; the run was loaded on {trained.device}")
    with tempfile.TemporaryDirectory(prefix="medvol-onnx-") as folder:
        path = Path(folder) / "model.onnx"
        export_network(trained, path)
        check_network(trained, path)
        session = open_session(path, threads)
    return replace(trained, network=OnnxNetwork(session), engine="onnxruntime")


def torch_module(trained: TrainedModel) -> Any:
    """The run's network as the torch module it was trained as (fp32, no autocast)."""
    from medvol.engine.torch_network import TorchNetwork

    if not isinstance(trained.network, TorchNetwork):
        raise MedvolError(trained.run_dir, f"only a torch network can be exported, not {trained.engine}'s")
    return trained.network.module


def example_batch(trained: TrainedModel, batch: int) -> np.ndarray:
    """Random float32 images ``(batch, C, X, Y, Z)`` of the shape the network is given in medvol."""
    spec = trained.input_spec
    spatial = spec.patch_size or spec.shape
    if spatial is None:
        raise MedvolError(trained.run_dir, "input.json gives neither a patch size nor an input shape")
    generator = np.random.default_rng(0)
    return generator.standard_normal((batch, spec.channels, *spatial), dtype=np.float32)


def model_card(trained: TrainedModel) -> str:
    """The run's model card as Markdown (``medvol report``'s)."""
    from medvol.report import model_card, read_run
    from medvol.report.render import render_markdown

    return render_markdown(model_card(read_run(trained.run_dir)))


def package_spec(
    trained: TrainedModel,
    package: PackageFolder,
    check: ExportCheck,
    quantization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``model.json``: what a predictor must do to predict what ``medvol predict`` predicts.

    ``model.export_check`` is the fp32 network's check against torch;
    ``model.quantization`` (``None`` for fp32) says how an int8 network was made.
    """
    import onnx
    import torch

    from medvol.engine.windows import SLIDING_WINDOW_BATCH, SLIDING_WINDOW_OVERLAP
    from medvol.version import __version__

    config = trained.config
    spec = trained.input_spec
    segmenter = trained.task.output == "segmentation"
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medvol_version": __version__,
        "task": spec.task,
        "output": trained.task.output,
        "classes": class_names(trained),
        "input": spec.to_dict(),
        "input_description": trained.task.describe_input(),
        "preprocess": preprocess_record(config),
        "normalizer": trained.normalizer.to_dict() if trained.normalizer is not None else None,
        "inference": {
            "sliding_window": {
                "patch_size": list(spec.patch_size or ()),
                "overlap": SLIDING_WINDOW_OVERLAP,
                "blend": "gaussian",
                "windows_per_batch": SLIDING_WINDOW_BATCH,
                "pad": "centred to at least patch_size, filled with each image's minimum",
            }
            if segmenter
            else None,
            "flip_tta": "optional (medvol predict --flip-tta): softmax averaged over every combination "
            "of flips of config.yaml's augment.flip_axes (refused when it is empty)"
            if segmenter
            else None,
            "output": "softmax over classes (axis 1); label maps: argmax after mapping back to the "
            "scan's own grid (linear)"
            if segmenter
            else "softmax over classes (axis 1)",
        },
        "model": {
            "file": package.network.name,
            "sha256": file_sha256(package.network),
            "opset": OPSET,
            "precision": "fp32" if quantization is None else "int8",
            "quantization": quantization,
            "input": {"name": INPUT_NAME, "shape": ["batch", spec.channels, *axes(spec, segmenter)]},
            "output": {"name": OUTPUT_NAME, "classes": spec.num_classes},
            "architecture": config.model.name,
            "options": config.model.options,
            "export_check": {
                "shape": list(check.shape),
                "max_abs_logit_difference": check.max_abs_logit_difference,
            },
        },
        "provenance": {
            "run": trained.run.name,
            "run_dir": str(trained.run_dir.resolve()),
            "checkpoint": trained.checkpoint,
            "epoch": trained.epoch,
            "checkpoint_sha256": file_sha256(trained.weights),
            "config_sha256": file_sha256(trained.run.config),
            "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"medvol": __version__, "torch": torch.__version__, "onnx": onnx.__version__},
        },
        "files": {"config": package.config.name, "model_card": package.card.name},
    }


def axes(spec: Any, segmenter: bool) -> list[Any]:
    """The spatial axes of the network's input: named (dynamic) for a segmenter, sizes for a classifier."""
    return ["x", "y", "z"] if segmenter else list(spec.shape)


def class_names(trained: TrainedModel) -> list[dict[str, Any]]:
    """``[{"value": 0, "name": "background"}, ...]``: a segmenter's label values, a classifier's classes."""
    count = trained.num_classes
    if trained.task.output != "segmentation":
        return [{"value": k, "name": f"class {k}"} for k in range(count)]
    from medvol.evaluation.segmentation import class_names as foreground_names

    names = foreground_names(trained.config)
    return [{"value": 0, "name": "background"}] + [
        {"value": k, "name": names.get(str(k), f"class {k}")} for k in range(1, count)
    ]


def replace_folder(temporary: Path, out: Path) -> None:
    """Rename ``temporary`` onto ``out``; an existing ``out`` is moved aside first and removed after."""
    if not out.exists():
        os.replace(temporary, out)
        return
    if not out.is_dir():
        raise MedvolError(out, "exists and is not a folder")
    old = out.with_name(f".{out.name}.old-{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.replace(out, old)
    os.replace(temporary, out)
    shutil.rmtree(old, ignore_errors=True)
