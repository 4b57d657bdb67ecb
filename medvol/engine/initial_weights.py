"""Starting a model from saved weights (``model.init: PATH``): a medvol checkpoint or a MedicalNet file.

Accepted files (read with ``torch.load(weights_only=True)``: tensors only,
never pickled code):

- a medvol checkpoint (``runs/NAME/checkpoints/best.pt``: the weights are
  under ``"model"``), e.g. a pretraining run to fine-tune;
- a plain state dict, or one under ``"state_dict"`` (MedicalNet's published
  ``resnet_10.pth`` … ``resnet_200.pth``, saved from ``DataParallel`` with a
  ``module.`` prefix): MedicalNet / MONAI names (``conv1``, ``bn1``,
  ``layer1.0.conv1``, ``layer1.0.downsample.0``, ``fc``) are mapped onto
  medvol's 3D ResNets (``stem.0``, ``stem.1``, ``stages.0.0.conv1``,
  ``stages.0.0.shortcut.0``, ``fc``).

The report is strict: every tensor of the file is loaded, or listed as
unexpected (e.g. MedicalNet's segmentation head ``conv_seg``) or as of
another shape; every tensor of the model that the file does not give keeps
its random initialisation and is listed as missing. A first convolution
stored for another number of input channels is adapted (the kernel summed
over the file's channels and spread evenly over the model's, so a scan
copied into every channel gives the same response) and listed as adapted.
Shape mismatches other than that and the final classifier (``fc``, whose
classes differ from task to task) are refused: they mean another depth or
width than the file's.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medvol.engine.checkpoint import load_checkpoint
from medvol.errors import ConfigurationError, UnreadableFileError
from medvol.io.atomic import file_sha256

#: MedicalNet / MONAI ResNet names → medvol ResNet3d names (applied in order, first match wins).
RESNET_NAME_MAP: tuple[tuple[str, str], ...] = (
    (r"^conv1\.", "stem.0."),
    (r"^bn1\.", "stem.1."),
    (r"^layer(\d+)\.(\d+)\.bn(\d)\.", "stages.{layer}.{block}.norm{n}."),
    (r"^layer(\d+)\.(\d+)\.downsample\.", "stages.{layer}.{block}.shortcut."),
    (r"^layer(\d+)\.(\d+)\.", "stages.{layer}.{block}."),
)
HEAD_PREFIXES = ("fc.",)
"""The classifier head: its shape follows the task's classes, so a mismatch there is expected."""


@dataclass
class InitialWeights:
    """What ``model.init`` loaded (recorded in the run's ``environment.json``)."""

    path: str
    sha256: str
    layout: str  # "medvol" or "medicalnet"
    loaded: int = 0
    adapted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for the log."""
        return (
            f"initial weights from {self.path} ({self.layout} layout): {self.loaded} tensor(s) loaded, "
            f"{len(self.adapted)} adapted, {len(self.missing)} kept random ({_short(self.missing)}), "
            f"{len(self.unexpected)} unused ({_short(self.unexpected)}), "
            f"{len(self.mismatched)} of another shape ({_short(self.mismatched)})"
        )


def load_initial_weights(model: nn.Module, path: str | Path) -> InitialWeights:
    """Copy the tensors of ``path`` into ``model`` (in place) and report what happened.

    Raises:
        UnreadableFileError: the file is missing, not a torch file of tensors,
            or holds no state dict.
        ConfigurationError: nothing matches, or tensors other than the
            classifier head and the first convolution's input channels differ in shape.
    """
    path = Path(path)
    state, layout = _read_state(path)
    target = model.state_dict()
    report = InitialWeights(str(path), file_sha256(path), layout)
    chosen: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name not in target:
            report.unexpected.append(name)
        elif tensor.shape == target[name].shape:
            chosen[name] = tensor
        elif _is_first_conv(name, tensor, target[name]):
            chosen[name] = _adapt_input_channels(tensor, target[name].shape[1])
            report.adapted.append(name)
        else:
            report.mismatched.append(f"{name} {tuple(tensor.shape)} vs {tuple(target[name].shape)}")
    report.missing = [name for name in target if name not in chosen]
    report.loaded = len(chosen)
    _refuse_if_wrong_model(path, report)
    model.load_state_dict({**target, **{k: v.to(target[k].dtype) for k, v in chosen.items()}})
    return report


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The file's tensors under medvol's names, and the layout they came in."""
    if not path.is_file():
        raise UnreadableFileError(path, "model.init: no such file")
    saved = load_checkpoint(path)  # tensors and plain data only; pickled code is refused
    state: Any = saved
    if isinstance(saved, dict):
        state = saved.get("model", saved.get("state_dict", saved))
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise UnreadableFileError(path, "model.init: the file holds no state dict of tensors")
    names = {re.sub(r"^module\.", "", str(k)): v for k, v in state.items()}
    if any(re.match(r"^(conv1|bn1|layer\d+)\.", name) for name in names):
        return {_medvol_name(name): tensor for name, tensor in names.items()}, "medicalnet"
    return names, "medvol"


def _medvol_name(name: str) -> str:
    """A MedicalNet / MONAI ResNet parameter name as medvol's ResNet3d names it."""
    for pattern, replacement in RESNET_NAME_MAP:
        match = re.match(pattern, name)
        if match:
            groups = match.groups()
            fields = {}
            if groups:
                fields = {"layer": int(groups[0]) - 1, "block": groups[1]}
                if len(groups) > 2:
                    fields["n"] = groups[2]
            return replacement.format(**fields) + name[match.end() :]
    return name


def _is_first_conv(name: str, stored: torch.Tensor, wanted: torch.Tensor) -> bool:
    """True for a stem convolution that differs only in its input channels."""
    return (
        name == "stem.0.weight"
        and stored.ndim == wanted.ndim == 5
        and stored.shape[0] == wanted.shape[0]
        and stored.shape[2:] == wanted.shape[2:]
    )


def _adapt_input_channels(kernel: torch.Tensor, channels: int) -> torch.Tensor:
    """A kernel ``(out, c, k, k, k)`` for ``channels`` inputs: summed over c, spread evenly."""
    total = kernel.sum(dim=1, keepdim=True)
    return (total / channels).repeat(1, channels, 1, 1, 1)


def _refuse_if_wrong_model(path: Path, report: InitialWeights) -> None:
    body = [m for m in report.mismatched if not m.startswith(HEAD_PREFIXES)]
    if body:
        raise ConfigurationError(
            f"{path}: model.init does not fit model.name/options (another depth or width?): "
            f"{len(body)} tensor(s) of another shape, e.g. {'; '.join(body[:3])}"
        )
    if report.loaded == 0:
        raise ConfigurationError(
            f"{path}: model.init matches no tensor of the model (file names such as "
            f"{_short(report.unexpected)})"
        )


def _short(names: list[str], shown: int = 3) -> str:
    if not names:
        return "none"
    more = f", … {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
