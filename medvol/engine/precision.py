"""Numeric precision and memory layout of a run: ``train.amp`` and ``train.channels_last`` resolved.

``auto`` turns on what was measured to pay off (``docs/benchmarks-training.md``,
``docs/training.md``):

- ``amp: auto`` → ``bf16`` autocast where the hardware computes in bfloat16
  natively: CUDA GPUs of compute capability 8.0 or newer (and ROCm), CPUs
  whose oneDNN bf16 path runs on native instructions (x86 AVX512-BF16 or
  AMX-BF16, Arm BF16) *and* passes :func:`cpu_bf16_self_check`. Otherwise
  ``none``: x86 CPUs with only AVX-512 would *emulate* bf16 in oneDNN, which
  is usually slower than fp32; Apple MPS was never measured. The self-check
  exists because oneDNN 3.12 (torch 2.13) was found computing wrong,
  run-to-run different and sometimes NaN bf16 weight gradients for 3-D
  convolutions whose first grid axis is longer than 1 but shorter than the
  kernel (e.g. a 2×2×2 grid: the last stage of a ResNet with a stride-2 stem
  on 28³), on an AMD EPYC CPU with AVX512-BF16 and no AMX; see
  ``docs/training.md``.
- ``channels_last: auto`` → on for medvol's 3D ResNet classifiers (faster in
  fp32 and bf16 on both CPUs measured), off for every other model (0.90–0.94×
  on the MONAI UNets).

Explicit values are kept, except that ``fp16`` needs a CUDA device: training
refuses it elsewhere (``strict=True``), inference falls back to fp32.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import torch
from torch import nn

from medvol.config import AmpSetting, ChannelsLastSetting
from medvol.errors import MedvolError

Amp = Literal["none", "bf16", "fp16"]

_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


@dataclass(frozen=True)
class Precision:
    """Resolved precision of a run: the autocast dtype and the memory layout of 5-D tensors.

    Attributes:
        amp: ``"none"`` (fp32), ``"bf16"`` or ``"fp16"`` autocast.
        channels_last: model weights and input batches in ``torch.channels_last_3d``.
        reason: why, in words (what ``auto`` found, or that the config said so).
    """

    amp: Amp
    channels_last: bool
    reason: str

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        """The autocast context for ``device`` (a no-op for ``amp: none``)."""
        if self.amp == "none":
            return nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The model with its 5-D weights in ``channels_last_3d`` when that is on (in place)."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        return model

    def prepare_input(self, images: torch.Tensor) -> torch.Tensor:
        """A 5-D batch in ``channels_last_3d`` when that is on; anything else unchanged.

        Optional: a convolution with channels-last weights returns channels-last
        output for a contiguous input too, so the layers after it run in
        channels-last anyway (inference relies on this).
        """
        if self.channels_last and images.dim() == 5:
            return images.contiguous(memory_format=torch.channels_last_3d)
        return images

    def to_dict(self) -> dict[str, Any]:
        return {"amp": self.amp, "channels_last": self.channels_last, "reason": self.reason}

    def describe(self) -> str:
        """One line for the console, e.g. ``amp bf16, channels_last on (...)``."""
        layout = "on" if self.channels_last else "off"
        return f"amp {self.amp}, channels_last {layout} ({self.reason})"


def resolve_precision(
    amp: AmpSetting,
    channels_last: ChannelsLastSetting,
    device: torch.device,
    model: nn.Module,
    strict: bool = True,
) -> Precision:
    """Resolve ``train.amp`` and ``train.channels_last`` for this device and model.

    Args:
        amp: the config's ``train.amp``.
        channels_last: the config's ``train.channels_last``.
        device: where the model runs.
        model: the (unwrapped) network.
        strict: refuse ``fp16`` off CUDA (training); otherwise fall back to fp32
            (inference of a run trained on a GPU).

    Raises:
        MedvolError: ``amp: fp16`` on a device other than CUDA, with ``strict``.
    """
    resolved_amp, amp_reason = resolve_amp(amp, device, strict)
    layout, layout_reason = resolve_channels_last(channels_last, model)
    return Precision(resolved_amp, layout, f"{amp_reason}; {layout_reason}")


def resolve_amp(amp: AmpSetting, device: torch.device, strict: bool = True) -> tuple[Amp, str]:
    """``(amp, reason)`` for ``device``; see :func:`resolve_precision`."""
    if amp == "fp16" and device.type != "cuda":
        if strict:
            raise MedvolError(
                None,
                f"train.amp: fp16 needs a CUDA device, but this run is on {device.type}; "
                "use amp: bf16 (or auto, or none) here",
            )
        return "none", f"amp fp16 needs CUDA, so fp32 on {device.type}"
    if amp == "bf16" and device.type == "cpu":
        correct, why = cpu_bf16_self_check()
        return "bf16", "amp bf16 as configured" + ("" if correct else f" (WARNING: {why})")
    if amp != "auto":
        return amp, f"amp {amp} as configured"
    native, why = native_bf16(device)
    return ("bf16" if native else "none"), f"amp auto: {why}"


def resolve_channels_last(setting: ChannelsLastSetting, model: nn.Module) -> tuple[bool, str]:
    """``(on, reason)``: ``auto`` is on for medvol's 3D ResNets only."""
    if setting != "auto":
        return bool(setting), f"channels_last {'on' if setting else 'off'} as configured"
    from medvol.models.resnet import ResNet3d

    if isinstance(model, ResNet3d):
        return True, "channels_last auto: on for a 3D ResNet classifier"
    return False, f"channels_last auto: off for {type(model).__name__} (measured slower on segmenters)"


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and what decided it."""
    if device.type == "cuda":
        if torch.version.hip:
            return True, "ROCm GPU with bf16"
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return True, f"CUDA GPU of compute capability {major}.{minor} has native bf16"
        return False, f"CUDA GPU of compute capability {major}.{minor} has no native bf16 (needs 8.0)"
    if device.type == "cpu":
        return _cpu_native_bf16()
    return False, f"bf16 autocast is not enabled automatically on {device.type}"


@lru_cache(maxsize=1)
def _cpu_native_bf16() -> tuple[bool, str]:
    if not torch.backends.mkldnn.is_available():
        return False, "this torch build has no oneDNN (mkldnn), so no fast CPU bf16"
    try:
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn_bf16 = False
    native, why = cpu_bf16_verdict(onednn_bf16, torch.cpu.get_capabilities(), platform.machine())
    if not native:
        return False, why
    correct, problem = cpu_bf16_self_check()
    return (True, why) if correct else (False, f"{why}, but {problem}")


def cpu_bf16_verdict(onednn_bf16: bool, capabilities: Mapping[str, Any], machine: str) -> tuple[bool, str]:
    """Whether a CPU has native bf16, from oneDNN's bf16 check and ``torch.cpu.get_capabilities()``.

    oneDNN's check alone is not enough on x86: it also passes on AVX-512 CPUs
    without bf16 instructions, where oneDNN emulates bf16. On Arm it is the
    BF16 extension itself.
    """
    if not onednn_bf16:
        return False, "oneDNN has no bf16 path on this CPU"
    architecture = str(capabilities.get("architecture") or machine).lower()
    if architecture in _X86:
        found = [name for name in ("amx_bf16", "avx512_bf16") if capabilities.get(name)]
        if found:
            return True, f"CPU with native bf16 ({', '.join(found)})"
        return False, "this x86 CPU has no AVX512-BF16/AMX-BF16; oneDNN would emulate bf16 (slower than fp32)"
    return True, f"{architecture} CPU with native bf16 (Arm BF16)"


@lru_cache(maxsize=1)
def cpu_bf16_self_check() -> tuple[bool, str]:
    """Whether oneDNN's bf16 3-D convolution weight gradients are right on this CPU.

    Compares them with fp32 gradients of the same (bf16-rounded) tensors, twice,
    on a 2×4×4 grid with a 3³ kernel: the case oneDNN 3.12 gets wrong on some
    CPUs. Takes milliseconds, once per process; draws from its own generator,
    so the run's random streams are untouched.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 2, 4, 4, generator=generator).bfloat16()
    w = (0.05 * torch.randn(16, 16, 3, 3, 3, generator=generator)).bfloat16()
    grad_out = torch.randn(2, 16, 2, 4, 4, generator=generator).bfloat16()
    with torch.enable_grad():
        reference = w.float().requires_grad_()
        torch.nn.functional.conv3d(x.float(), reference, padding=1).backward(grad_out.float())
        assert reference.grad is not None
        scale = float(reference.grad.abs().max())
        for _ in range(2):
            weight = w.clone().requires_grad_()
            torch.nn.functional.conv3d(x, weight, padding=1).backward(grad_out)
            assert weight.grad is not None
            error = float((weight.grad.float() - reference.grad).abs().max()) / scale
            if not error < 0.05:  # bf16 rounding gives about 0.003; NaN fails too
                return False, (
                    "oneDNN's bf16 convolution gradients failed medvol's self-check on this CPU "
                    f"(relative error {error:.2g} on a 2x4x4 grid), so bf16 training can get wrong "
                    "or NaN gradients"
                )
    return True, "bf16 convolution gradients passed medvol's self-check"
