"""Experiment configs: YAML mapped onto typed, validated sections.

``load_config(path, overrides)`` reads a YAML file, applies ``--set a.b=c``
overrides (values parsed as YAML, so ``--set train.epochs=5`` is an int), and
validates everything with pydantic: an unknown key is an error that names it,
says where it is and suggests the closest known key; a wrong type says which
key and what was expected. The resolved config is what a run saves.

Units are in the key names (``spacing_mm``, ``lr``, ``epochs``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medvol.errors import MedvolError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(Section):
    """How cases are divided into training and validation (and test)."""

    method: Literal["nnunet", "official", "kfold", "file"] = "nnunet"
    fold: int = Field(0, ge=0)
    n_splits: int = Field(5, ge=2)
    seed: int = 12345
    file: Path | None = None  # with method "file": a JSON written by medvol.data.splits.save_folds


class DataConfig(Section):
    """Where the cases are and how they are read."""

    # segmentation: label maps; classification: scan files with a class each (a .csv manifest);
    # medmnist-classification: a MedMNIST 3D .npz with its official split (medvol.tasks)
    task: Literal["segmentation", "classification", "medmnist-classification"]
    root: Path  # dataset folder, .csv manifest, or MedMNIST .npz
    split: SplitConfig = SplitConfig()
    classes: list[int] | None = None  # allowed label values (segmentation)
    num_classes: int = Field(2, ge=2)
    patch_size: tuple[int, int, int] | None = None
    cache_dir: Path | None = None
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _medmnist_file_needs_its_task(self) -> DataConfig:
        if self.task != "medmnist-classification" and self.root.suffix.lower() == ".npz":
            raise ValueError(
                f"data.root is a MedMNIST .npz file: set data.task: medmnist-classification (got {self.task})"
            )
        return self


class ModelConfig(Section):
    """A model from ``medvol.models.create_model(name, **options)``."""

    name: str
    options: dict[str, Any] = {}


class LossConfig(Section):
    name: str
    options: dict[str, Any] = {}


class OptimizerConfig(Section):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0)  # SGD momentum factor (SGD only)


class ScheduleConfig(Section):
    """Learning-rate schedule per epoch, after ``warmup_epochs`` of linear warm-up."""

    name: Literal["constant", "multistep", "cosine", "poly"] = "constant"
    milestones: list[int] = []  # multistep: epochs where lr is multiplied by gamma
    gamma: float = 0.1
    power: float = 0.9  # poly: lr × (1 − epoch / epochs) ** power
    warmup_epochs: int = Field(0, ge=0)


AmpSetting = Literal["auto", "none", "bf16", "fp16"]
ChannelsLastSetting = Literal["auto", True, False]


class TrainConfig(Section):
    """How a model is trained.

    ``amp`` (autocast dtype) and ``channels_last`` (5-D tensors in
    ``torch.channels_last_3d``) default to ``auto``, resolved per device and
    model by ``medvol.engine.precision``: bf16 where the hardware has native
    bf16, channels-last for the 3D ResNets. ``fp16`` needs CUDA.
    """

    epochs: int = Field(1, ge=1)
    batch_size: int = Field(2, ge=1)
    amp: AmpSetting = "auto"
    channels_last: ChannelsLastSetting = "auto"
    grad_clip: float | None = None
    val_every: int = Field(1, ge=1)
    metric: str = "loss"  # the validation metric that selects the best checkpoint
    metric_mode: Literal["min", "max"] = "min"
    early_stop_patience: int | None = None  # stop after N validations with no better metric; null: never
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    seed: int = 0

    @model_validator(mode="after")
    def _fp16_needs_cuda(self) -> TrainConfig:
        if self.amp == "fp16" and self.device in ("cpu", "mps"):
            raise ValueError(
                f"amp: fp16 needs a CUDA device, but device is {self.device}; use amp bf16, auto or none"
            )
        return self


class TrackingConfig(Section):
    output_dir: Path = Path("runs")
    name: str = "run"
    tensorboard: bool = True
    mlflow: bool = False
    mlflow_uri: str | None = None


class ExperimentConfig(Section):
    """A whole training run."""

    data: DataConfig
    model: ModelConfig
    loss: LossConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    preprocess: dict[str, Any] = {}  # medvol.transforms.PreprocessConfig fields
    normalize: dict[str, Any] | None = None  # medvol.transforms.Normalizer.to_dict() form
    augment: dict[str, Any] | None = None  # medvol.augment.AugmentConfig fields; {} = defaults, null = none

    @field_validator("preprocess")
    @classmethod
    def _known_preprocess_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        from medvol.transforms import PreprocessConfig

        PreprocessConfig.from_dict(value)  # raises ValueError naming unknown keys
        return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` entries in a nested dict (values parsed as YAML)."""
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator or not key:
            raise MedvolError(None, f"--set expects key=value, got {override!r}")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise MedvolError(None, f"--set {key}: {part} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(text)
    return data


def parse_config(data: dict[str, Any], source: str | Path | None = None) -> ExperimentConfig:
    """Validate a config dict; errors name every bad key with a suggestion."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as error:
        raise MedvolError(source, "invalid config:\n" + _explain(error)) from error


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config, apply ``--set`` overrides and validate it."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise MedvolError(path, f"cannot read the config ({error})") from error
    if not isinstance(data, dict):
        raise MedvolError(path, "a config must be a mapping of sections")
    return parse_config(apply_overrides(data, overrides or []), source=path)


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML (what a run folder keeps)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _explain(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        location = [str(part) for part in problem["loc"]]
        where = ".".join(location)
        if problem["type"] == "extra_forbidden":
            lines.append(f"  unknown key {where}{_suggestion(location)}")
        else:
            lines.append(f"  {where}: {problem['msg']}")
    return "\n".join(lines)


def _suggestion(location: list[str]) -> str:
    """`` (did you mean x.y?)`` from the known keys of the enclosing section."""
    section: type[BaseModel] = ExperimentConfig
    for part in location[:-1]:
        field = section.model_fields.get(part)
        annotation = None if field is None else field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        section = annotation
    close = difflib.get_close_matches(location[-1], list(section.model_fields), n=1)
    return f" (did you mean {'.'.join([*location[:-1], close[0]])}?)" if close else ""
