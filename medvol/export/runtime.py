"""The network executed by ONNX Runtime, behind the same seam as torch's: images in, logits out.

``OnnxNetwork`` maps images ``(B, C, X, Y, Z)`` float32 to logits (numpy
arrays), so every inference path (sliding windows, flips, classification
batches, mapping back to the scan's grid, the writers) is medvol's own, whatever
runs the network:

- ``load_package(PACKAGE)`` is a ``TrainedModel`` from a model package
  (``medvol export``), checked first (``medvol.export.package.read_spec``);
  it imports neither torch nor MONAI (``pip install 'medvol[infer]'``);
- ``medvol.export.exporter.with_onnxruntime(trained)`` is a run's model with
  its network exported to ONNX and run by ONNX Runtime
  (``medvol predict --engine onnxruntime``).

ONNX Runtime runs on the CPU, the network as the package holds it: fp32, or
int8 QDQ (``medvol export --int8``, ``medvol.export.quantize``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvol.errors import MedvolError

if TYPE_CHECKING:
    from medvol.engine.inference import TrainedModel


class OnnxNetwork:
    """An ONNX Runtime session as a network: ``network(images (B, C, X, Y, Z))`` → logits, on the CPU."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(images, dtype=np.float32)
        (logits,) = self.session.run([self.output_name], {self.input_name: array})
        return np.asarray(logits, dtype=np.float32)

    @property
    def threads(self) -> int:
        """Intra-op threads of the session (ONNX Runtime's default: one per core)."""
        return int(self.session.get_session_options().intra_op_num_threads) or os.cpu_count() or 1


def open_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of ``path``; ``threads`` intra-op threads (``None``: its own).

    Raises:
        MedvolError: onnxruntime is not installed, or cannot run the network
            (e.g. an opset newer than it knows), naming the file.
    """
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        raise MedvolError(path, f"ONNX Runtime {ort.__version__} cannot run it: {why(error)}") from error


def why(error: Exception) -> str:
    """onnxruntime's error in one line: the opset it cannot run, or the first line of its message."""
    text = str(error)
    used = re.search(r"Opset (\d+) is under development", text)
    supported = re.search(r"support for domain ai\.onnx is till opset (\d+)", text)
    if used and supported:
        return (
            f"the network uses ONNX opset {used[1]}, this ONNX Runtime runs opsets up to {supported[1]} "
            "(upgrade onnxruntime, or export with a medvol whose opset it runs)"
        )
    first = " ".join(text.strip().splitlines()[:1])
    return first[:300] or type(error).__name__


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise MedvolError(
            None, "ONNX Runtime inference needs the onnxruntime package: pip install 'medvol[infer]'"
        ) from error
    return onnxruntime


def load_package(path: str | Path, threads: int | None = None, device: str = "auto") -> TrainedModel:
    """A model package (``medvol export``) as a ``TrainedModel`` whose network ONNX Runtime runs.

    Raises:
        MedvolError: the package is incomplete, changed, from a newer medvol
            or not runnable here (``medvol.export.package.read_spec``,
            ``open_session``); a device other than the CPU.
    """
    from medvol.engine.inference import TrainedModel
    from medvol.engine.run_folder import Checkpoint, InputSpec, RunFolder
    from medvol.export.package import PackageFolder, preprocess_record, read_spec
    from medvol.tasks import InputRecipe, task_for

    check_device(device)
    spec = read_spec(path)
    package = PackageFolder(path)
    run = RunFolder(package.path)  # config.yaml has the same name in a package
    config = run.read_config(factories=False)  # checked when the run trained; the model is ONNX now
    if preprocess_record(config) != spec.get("preprocess"):
        raise MedvolError(package.spec, "its preprocess section differs from config.yaml's (export again)")
    task = task_for(config)
    recipe = InputRecipe(
        config.preprocess,
        task.load_normalizer(spec.get("normalizer")),
        InputSpec.from_dict(spec.get("input") or {}, package.spec),
    )
    provenance = spec.get("provenance") or {}
    checkpoint: Checkpoint = "last" if provenance.get("checkpoint") == "last" else "best"
    return TrainedModel(
        run=run,
        config=config,
        task=task,
        network=OnnxNetwork(open_session(package.network, threads)),
        recipe=recipe,
        checkpoint=checkpoint,
        epoch=int(provenance.get("epoch", -1)),
        weights=package.network,
        engine="onnxruntime",
        device="cpu",
    )


def check_device(device: str) -> None:
    """Refuse a device other than the CPU for ONNX Runtime."""
    if device not in ("auto", "cpu"):
        raise MedvolError(None, f"ONNX Runtime runs on the CPU here; --device {device} is for --engine torch")
