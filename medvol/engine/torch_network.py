"""A torch module behind medvol's network seam: numpy windows in, numpy logits out.

``TorchNetwork(module, device, autocast)`` is what sliding windows
(``medvol.engine.windows``) and classification batches call for the torch
engine, as ``medvol.export.runtime.OnnxNetwork`` is for ONNX Runtime: each
call moves a batch ``(B, C, X, Y, Z)`` float32 to ``device``, runs the module
without gradients under the run's autocast, and returns the logits as float32
on the CPU. ``load_network`` builds a run's module from its checkpoint.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from medvol.engine.checkpoint import load_checkpoint
from medvol.engine.distributed import choose_device
from medvol.engine.launch import launch_environment
from medvol.engine.precision import Precision, resolve_precision
from medvol.errors import MedvolError
from medvol.models import create_model

if TYPE_CHECKING:
    from medvol.config import ExperimentConfig


class TorchNetwork:
    """``module`` (eval mode, on ``device``) as a callable on numpy batches.

    Attributes:
        module: the network.
        device: where it runs.
        precision: the run's ``train.amp`` and ``train.channels_last`` resolved
            for ``device`` (``None`` when the caller gives its own ``autocast``).
    """

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        autocast: AbstractContextManager[Any],
        precision: Precision | None = None,
    ) -> None:
        self.module = module
        self.device = device
        self.autocast = autocast
        self.precision = precision

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Logits ``(B, K, ...)`` float32 of images ``(B, C, X, Y, Z)`` float32."""
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        with torch.no_grad(), self.autocast:
            logits = self.module(batch)
        return logits.float().cpu().numpy()

    @property
    def threads(self) -> int:
        """Threads torch computes with on the CPU."""
        return torch.get_num_threads()


def load_network(config: ExperimentConfig, path: Path, device: str) -> tuple[TorchNetwork, dict[str, Any]]:
    """The run's module from the checkpoint at ``path`` on ``device``, and the checkpoint's state.

    ``device`` is ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``; under
    torchrun each rank takes its own GPU. The run's ``train.amp`` and
    ``train.channels_last`` are resolved for it as training resolves them
    (``medvol.engine.precision``), except that ``fp16`` off CUDA runs in fp32.
    """
    try:
        torch_device = choose_device(device, launch_environment().local_rank)
    except RuntimeError as error:
        raise MedvolError(None, f"device {device}: {error}") from error
    state = load_checkpoint(path, map_location=torch_device)
    module = create_model(config.model.name, **config.model.options).to(torch_device)
    module.load_state_dict(state["model"])
    module.eval()
    amp, layout = config.train.amp, config.train.channels_last
    precision = resolve_precision(amp, layout, torch_device, module, strict=False)
    precision.prepare_model(module)
    return TorchNetwork(module, torch_device, precision.autocast(torch_device), precision), state
