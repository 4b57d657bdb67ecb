"""Experiment configs: YAML mapped onto typed, validated sections.

``load_config(path, overrides)`` reads a YAML file, applies ``--set a.b=c``
overrides (values parsed as YAML, so ``--set train.epochs=5`` is an int), and
validates everything with pydantic: an unknown key is an error that names it,
says where it is and suggests the closest known key; a wrong type says which
key and what was expected. The resolved config is what a run saves.

The sections that configure medvol's own components are typed by those
components, so each setting is defined once: ``preprocess`` is a
``medvol.transforms.PreprocessConfig``, ``augment`` a
``medvol.augment.AugmentConfig``, and ``normalize`` is checked against the
constructor of the normaliser it names. ``model`` and ``loss`` options are
checked against their factories' signatures (nothing is built), and the class
counts of ``data`` and ``model`` must agree. ``dump_config`` writes those
sections with the keys they were written with (plus any value that differs
from its default), so a saved config reads back to an equal one.

Units are in the key names (``spacing_mm``, ``lr``, ``epochs``).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from medvol.augment.config import MIXES, AugmentConfig
from medvol.errors import MedvolError
from medvol.transforms import Normalizer, PreprocessConfig, ZScore
from medvol.transforms.normalize import _NORMALIZERS

#: Default share of segmentation training patches centred on a labelled voxel (nnU-Net's 0.33).
FOREGROUND_FRACTION = 1 / 3

#: Where a problem is, relative to the section that found it, and what it is.
Problem = tuple[tuple[str, ...], str]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(Section):
    """How cases are divided into training and validation (and test)."""

    method: Literal["nnunet", "official", "kfold", "file", "separate"] = "nnunet"
    fold: int = Field(0, ge=0)
    n_splits: int = Field(5, ge=2)
    seed: int = 12345
    file: Path | None = None  # with method "file": a JSON written by medvol.data.splits.save_folds
    val_root: Path | None = None

    @model_validator(mode="after")
    def _val_root_with_separate(self) -> SplitConfig:
        if self.method == "separate" and self.val_root is None:
            raise ValueError(
                "split.method: separate trains on every usable case of data.root and validates on "
                "the cases of split.val_root: set split.val_root (a folder or .csv manifest)"
            )
        defaults = {key: field.default for key, field in type(self).model_fields.items()}
        unused = [key for key in ("fold", "n_splits", "seed", "file") if getattr(self, key) != defaults[key]]
        if self.method == "separate" and unused:
            raise ValueError(
                f"{', '.join('split.' + key for key in unused)} not used by split.method: separate (every "
                "usable case of data.root trains, the cases of split.val_root validate); remove it"
            )
        if self.method != "separate" and self.val_root is not None:
            raise ValueError(
                f"split.val_root is the validation set of split.method: separate; with method "
                f"{self.method!r} the validation cases come from data.root (set method: separate, "
                "or remove val_root)"
            )
        if self.method == "file" and self.file is None:
            raise ValueError("split.method: file needs split.file (a JSON of folds)")
        return self


class ClipConfig(Section):
    """How clips (videos, DICOM cine loops: ``(C, X, Y, T)``) become model inputs ``(C, X, Y, frames)``.

    A clip is ``frames`` frames taken every ``stride`` frames of a video, so
    it spans ``(frames - 1) × stride + 1`` frames; a shorter video is an error
    (``too_short`` in ``medvol index``). Frames are resized to ``resize`` (if
    given), then cropped (padded where smaller) to ``size``. Nothing else
    changes their geometry: ``preprocess`` (reorientation, resampling in mm)
    is refused with clips, since it would act along time. Jitter and reversal
    apply in training only; evaluation and prediction average the model's
    logits over ``eval_clips`` clips spread evenly over the video, centre-cropped.
    """

    frames: int = Field(16, ge=1)  # frames per clip: the model's third input axis
    stride: int = Field(1, ge=1)  # take every stride-th frame
    size: tuple[int, int]  # the model's frame size [X, Y] in pixels
    resize: tuple[int, int] | None = None  # frames resized to [X, Y] pixels (bilinear) before the crop
    sampling: Literal["random", "centre"] = "random"  # where a training clip starts in its video
    crop: Literal["random", "centre"] = "random"  # where a training crop lies in the frame
    eval_clips: int = Field(1, ge=1)  # clips per video at validation, evaluation, prediction (1: centre)
    brightness: float = Field(0.0, ge=0, lt=1)  # training: intensities × a factor in [1 - b, 1 + b]
    contrast: float = Field(0.0, ge=0, lt=1)  # training: deviation from the clip mean × [1 - c, 1 + c]
    saturation: float = Field(0.0, ge=0, le=1)  # training, colour: deviation from grey × [1 - s, 1 + s]
    reverse_prob: float = Field(0.0, ge=0, le=1)  # training: probability of playing a clip backwards
    reverse_preserves_label: bool = False  # declare that direction of motion does not carry the class

    @model_validator(mode="after")
    def _reversal_declared(self) -> ClipConfig:
        if self.reverse_prob > 0 and not self.reverse_preserves_label:
            raise ValueError(
                "data.clip.reverse_prob plays clips backwards, which changes the class wherever the "
                "direction of motion carries it; set data.clip.reverse_preserves_label: true to declare "
                "that it does not"
            )
        return self

    @property
    def span(self) -> int:
        """Frames of the video one clip covers: ``(frames - 1) × stride + 1``."""
        return (self.frames - 1) * self.stride + 1


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
    foreground_fraction: float = Field(FOREGROUND_FRACTION, ge=0, le=1)
    input_shape: tuple[int, int, int] | None = None
    clip: ClipConfig | None = None  # classification of clips: their sampling, crop and jitter
    cache_dir: Path | None = None
    num_workers: int = Field(0, ge=0)
    prefetch: bool = True

    @model_validator(mode="after")
    def _kind_and_shapes_agree(self) -> DataConfig:
        if self.task != "medmnist-classification" and self.root.suffix.lower() == ".npz":
            raise ValueError(
                f"data.root is a MedMNIST .npz file: set data.task: medmnist-classification (got {self.task})"
            )
        if self.task != "segmentation" and self.patch_size is not None:
            raise ValueError(
                "data.patch_size is the segmentation patch; a classifier's input shape is data.input_shape"
            )
        if self.clip is not None and self.task != "classification":
            raise ValueError(
                f"data.clip is for classification of clips (data.task: classification), not {self.task}"
            )
        if self.clip is not None and self.input_shape is not None:
            raise ValueError(
                "with data.clip the model's input is [size X, size Y, frames] of data.clip: "
                "remove data.input_shape"
            )
        if self.task == "classification" and self.input_shape is None and self.clip is None:
            raise ValueError(
                "classification from scan files needs data.input_shape, the model's input shape "
                "[X, Y, Z] in voxels (every case is centre-cropped/padded to it), or data.clip for clips"
            )
        if self.foreground_fraction != FOREGROUND_FRACTION and (
            self.task != "segmentation" or self.patch_size is None
        ):  # the default is in every saved config, so only another value is refused
            raise ValueError(
                "data.foreground_fraction is the share of segmentation training patches centred on a "
                "labelled voxel: it needs data.task: segmentation and a data.patch_size (without one, "
                "training sees whole volumes)"
            )
        if self.task != "classification" and self.input_shape is not None:
            raise ValueError(
                f"data.input_shape is for classification from scan files (data.task: {self.task} "
                "takes its shape from the data or data.patch_size)"
            )
        return self


class _Registered(Section):
    """A section naming a registered model or loss: its options are checked against the factory."""

    _kind: ClassVar[str]
    name: str
    options: dict[str, Any] = {}

    @model_validator(mode="after")
    def _known_name_and_options(self, info: ValidationInfo) -> _Registered:
        if not _check_factories(info):
            return self
        from medvol.factories import option_problems

        problems = option_problems(self._kind, self.name, self.options)
        inner, inner_options = self.options.get("loss", "dice_ce"), self.options.get("loss_options") or {}
        if (
            not problems
            and (self._kind, self.name) == ("loss", "deep_supervision")
            and isinstance(inner, str)
            and isinstance(inner_options, Mapping)
        ):  # the loss it wraps, and that loss's options
            problems = [
                (("options", "loss") if at == ("name",) else ("options", "loss_options", *at[1:]), message)
                for at, message in option_problems("loss", inner, inner_options)
            ]
        if problems:
            raise _located(problems)
        return self


class ModelConfig(_Registered):
    """A model from ``medvol.models.create_model(name, **options)``."""

    _kind = "model"
    init: Path | None = None  # start from saved weights: a medvol checkpoint or a MedicalNet .pth


class LossConfig(_Registered):
    """The training loss: ``medvol.losses.create_loss(name, **options)``."""

    _kind = "loss"


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


class NormalizerParams(Section):
    """Constructor arguments of a normaliser (subclassed per normaliser); dumps the ones written."""

    @model_serializer(mode="wrap")
    def _as_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if key in self.model_fields_set}


class NormalizeSection(Section):
    """``normalize``: ``{type: NAME, params: {...}}``, one subclass per normaliser."""

    type: str  # the normaliser's class name in medvol.transforms.normalize
    params: NormalizerParams

    def build(self) -> Normalizer:
        """A new, unfitted normaliser with these parameters."""
        return _NORMALIZERS[self.type](**dict(self.params))

    @model_validator(mode="after")
    def _valid_values(self) -> NormalizeSection:
        self.build()  # the normaliser checks its own values (ValueError)
        return self


def _normalize_section(kind: type[Normalizer]) -> type[NormalizeSection]:
    """The section for one normaliser; its params are the constructor's parameters, types and defaults."""
    hints = typing.get_type_hints(kind.__init__)
    empty = inspect.Parameter.empty
    fields: dict[str, Any] = {
        name: (hints.get(name, Any), ... if parameter.default is empty else parameter.default)
        for name, parameter in inspect.signature(kind).parameters.items()
    }
    params = create_model(f"{kind.__name__}Params", __base__=NormalizerParams, __module__=__name__, **fields)
    required = any(default is ... for _, default in fields.values())
    section = create_model(
        f"{kind.__name__}Section",
        __base__=NormalizeSection,
        __module__=__name__,
        type=(Literal[kind.__name__], ...),  # type: ignore[arg-type]
        params=(params, ... if required else params()),
    )
    globals().update({params.__name__: params, section.__name__: section})  # importable, so picklable
    return section


if TYPE_CHECKING:
    NormalizeConfig = NormalizeSection
else:
    NormalizeConfig = Annotated[
        Union[tuple(_normalize_section(kind) for kind in _NORMALIZERS.values())],  # noqa: UP007
        Field(discriminator="type"),
    ]

#: The sections typed by a frozen dataclass of the component they configure.
_DATACLASS_SECTIONS = ("preprocess", "augment")


class ExperimentConfig(Section):
    """A whole training run."""

    data: DataConfig
    model: ModelConfig
    loss: LossConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    preprocess: PreprocessConfig = PreprocessConfig()  # medvol.transforms.PreprocessConfig fields
    normalize: NormalizeConfig | None = None  # {type, params} of a normaliser; null = per-scan ZScore
    augment: AugmentConfig | None = None  # medvol.augment.AugmentConfig fields; {} = defaults, null = none

    # Per dataclass section, the keys to dump: those written, or set to a non-default value.
    _written: dict[str, frozenset[str]] = PrivateAttr(default_factory=dict)

    def normalizer(self) -> Normalizer:
        """A new, unfitted normaliser: ``normalize``'s, or ``ZScore(per_scan=True)`` when it is null."""
        return ZScore(per_scan=True) if self.normalize is None else self.normalize.build()

    @field_validator("augment", mode="wrap")
    @classmethod
    def _augment_value_errors(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except MedvolError as error:  # AugmentConfig's own value checks
            raise ValueError(error.problem) from error

    @model_validator(mode="wrap")
    @classmethod
    def _remember_written_keys(
        cls, data: Any, handler: ModelWrapValidatorHandler[ExperimentConfig]
    ) -> ExperimentConfig:
        config = handler(data)
        if isinstance(data, Mapping):
            given = {name: data.get(name) for name in _DATACLASS_SECTIONS}
            config._written = {
                name: frozenset(map(str, value)) if isinstance(value, Mapping) else _changed(value)
                for name, value in given.items()
            }
        return config

    @model_validator(mode="after")
    def _class_counts_agree(self, info: ValidationInfo) -> ExperimentConfig:
        problems: list[Problem] = []
        classes = self.data.num_classes
        if "num_classes" in self.model.options:
            given = self.model.options["num_classes"]
            if given != classes:
                problems.append(
                    (
                        ("model", "options", "num_classes"),
                        f"is {given!r} but data.num_classes is {classes}: the model must output one "
                        "score per class",
                    )
                )
        elif _check_factories(info):
            from medvol.factories import factories

            parameter = inspect.signature(factories("model")[self.model.name]).parameters.get("num_classes")
            if parameter is not None and parameter.default not in (inspect.Parameter.empty, classes):
                problems.append(
                    (
                        ("model", "options"),
                        f"model {self.model.name!r} outputs {parameter.default} classes unless "
                        f"num_classes is given, but data.num_classes is {classes}; "
                        f"set model.options.num_classes: {classes}",
                    )
                )
        declared = self.data.classes
        if (
            self.data.task == "segmentation"
            and declared is not None
            and sorted(set(declared)) != list(range(classes))
        ):
            problems.append(
                (
                    ("data", "classes"),
                    f"{declared} does not match data.num_classes {classes}: segmentation labels are the "
                    f"class indices 0 to {classes - 1}, background 0 included",
                )
            )
        if problems:
            raise _located(problems)
        return self

    @model_validator(mode="after")
    def _clips_keep_their_time_axis(self) -> ExperimentConfig:
        if self.data.clip is None:
            return self
        problems: list[Problem] = []
        if self.preprocess != PreprocessConfig():
            problems.append(
                (
                    ("preprocess",),
                    "reorients and resamples scans in mm, which would act along the time axis of clips; "
                    "with data.clip, frames are resized by data.clip.resize: remove preprocess",
                )
            )
        if self.augment is not None:
            problems.append(
                (
                    ("augment",),
                    "its stages act on 3D scans (rotations, flips, elastic and k-space artefacts would mix "
                    "time with space); clips are augmented by data.clip (crop, brightness, contrast, "
                    "saturation, reverse_prob): remove augment",
                )
            )
        if problems:
            raise _located(problems)
        return self

    @model_validator(mode="after")
    def _mixing_fits_the_task(self) -> ExperimentConfig:
        mix = "none" if self.augment is None else self.augment.mix
        wanted = MIXES.get(mix)
        task = "segmentation" if self.data.task == "segmentation" else "classification"
        if wanted is not None and wanted != task:
            others = [name for name, kind in MIXES.items() if kind == task]
            raise _located(
                [
                    (
                        ("augment", "mix"),
                        f"{mix} is for {wanted}; data.task {self.data.task} takes {' or '.join(others)}",
                    )
                ]
            )
        return self

    @model_serializer(mode="wrap")
    def _as_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in _DATACLASS_SECTIONS:
            section, dumped = getattr(self, name), data.get(name)
            if section is not None and isinstance(dumped, dict):
                keep = self._written.get(name, frozenset()) | _changed(section)
                data[name] = {key: value for key, value in dumped.items() if key in keep}
        return data


def _changed(section: Any) -> frozenset[str]:
    """The fields of a config dataclass that differ from their defaults."""
    if not dataclasses.is_dataclass(section) or isinstance(section, type):
        return frozenset()
    default = type(section)()
    return frozenset(
        field.name
        for field in dataclasses.fields(section)
        if getattr(section, field.name) != getattr(default, field.name)
    )


def _located(problems: Sequence[Problem]) -> PydanticCustomError:
    """One validation error carrying several problems, each at its own location (see ``_explain``)."""
    text = "; ".join(f"{'.'.join(where)}: {message}" for where, message in problems)
    return PydanticCustomError("medvol_located", "{text}", {"text": text, "problems": list(problems)})


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` entries in a nested dict (values parsed as plain YAML, see ``read_yaml``).

    Raises:
        MedvolError: an entry without ``=`` or with an empty key part, a key
            below a value that is not a section, or a value that is not plain
            YAML (unclosed brackets, a ``!!`` tag, a key given twice); the
            message names the entry.
    """
    for override in overrides:
        key, separator, text = override.partition("=")
        parts = key.strip().split(".")
        if not separator or not all(part.strip() for part in parts):
            raise MedvolError(
                None, f"--set expects key=value (a dotted key such as train.epochs), got {override!r}"
            )
        try:
            value = read_yaml(text)
        except yaml.YAMLError as error:
            raise MedvolError(None, f"--set {override!r}: {_yaml_problem(error)}") from error
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise MedvolError(None, f"--set {key}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(text: str) -> Any:
    """Plain YAML data (PyYAML's safe loader: no ``!!python`` tags), refusing a key given twice in a mapping.

    Raises:
        yaml.YAMLError: not YAML, an unknown tag, or a repeated key (with its line).
    """
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a repeated key: PyYAML would keep the last one silently."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # keys merged in with << may be overridden: that is what merging is for
        key = loader.construct_object(key_node, deep=deep)
        try:
            repeated = key in seen
        except TypeError:
            continue  # unhashable: construct_mapping says so
        if repeated:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"found the key {key!r} twice",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """What is wrong with a YAML value, in words (``error`` from ``read_yaml``)."""
    problem = str(getattr(error, "problem", None) or error).strip()
    if "could not determine a constructor for the tag" in problem:
        tag = problem.rsplit(" ", 1)[-1].strip("'").replace("tag:yaml.org,2002:", "!!")
        plain = "a number, text, [a, list] or {a: mapping}"
        return f"YAML tags are not accepted ({tag}): a value is plain data ({plain})"
    if problem.startswith("found the key"):
        return problem
    return f"not valid YAML ({problem}); quote text that YAML would read otherwise"


def _check_factories(info: ValidationInfo) -> bool:
    """Whether to check model and loss names and options against their factories (see ``parse_config``)."""
    return bool((info.context or {}).get("factories", True))


def parse_config(
    data: dict[str, Any], source: str | Path | None = None, *, factories: bool = True
) -> ExperimentConfig:
    """Validate a config dict; errors name every bad key with a suggestion.

    ``factories=False`` leaves out the checks of ``model`` and ``loss`` against
    their factories, which import torch and MONAI: for a model package's
    config (checked when its run was trained), read where only ONNX Runtime runs.
    """
    try:
        return ExperimentConfig.model_validate(data, context={"factories": factories})
    except ValidationError as error:
        raise MedvolError(source, "invalid config:\n" + _explain(error)) from error


def load_config(
    path: str | Path, overrides: list[str] | None = None, *, factories: bool = True
) -> ExperimentConfig:
    """Read a YAML config, apply ``--set`` overrides and validate it (``factories``: see ``parse_config``)."""
    path = Path(path)
    try:
        data = read_yaml(path.read_text()) or {}
    except OSError as error:
        raise MedvolError(path, f"cannot read the config ({error})") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = "" if mark is None else f"line {mark.line + 1}, column {mark.column + 1}: "
        raise MedvolError(path, f"cannot read the config ({where}{_yaml_problem(error)})") from error
    except UnicodeDecodeError as error:
        raise MedvolError(path, "cannot read the config: not a text (YAML) file") from error
    if not isinstance(data, dict):
        raise MedvolError(path, "a config must be a mapping of sections")
    return parse_config(apply_overrides(data, overrides or []), source=path, factories=factories)


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML (what a run folder keeps)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _explain(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        location, section = _resolve(problem["loc"])
        where = ".".join(location)
        kind, context = problem["type"], problem.get("ctx") or {}
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            close = difflib.get_close_matches(location[-1], list(_fields(section)), n=1)
            hint = f" (did you mean {'.'.join([*location[:-1], close[0]])}?)" if close else ""
            lines.append(f"  unknown key {where}{hint}")
        elif kind == "medvol_located":
            lines += [f"  {'.'.join([*location, *at])}: {message}" for at, message in context["problems"]]
        elif kind in ("union_tag_invalid", "union_tag_not_found"):  # normalize.type
            key = str(context["discriminator"]).strip("'")
            expected = list(_union_tags(_fields(section).get(location[-1])))
            close = difflib.get_close_matches(str(context.get("tag")), expected, n=1)
            found = f"unknown {context['tag']!r}" if "tag" in context else "missing"
            hint = f" (did you mean {close[0]}?)" if close else ""
            lines.append(f"  {where}.{key}: {found}{hint}; one of {', '.join(expected)}")
        elif kind == "tuple_type":
            lines.append(f"  {where}: should be a list")
        else:
            lines.append(f"  {where}: {str(problem['msg']).removeprefix('Value error, ')}")
    return "\n".join(lines)


def _resolve(location: Sequence[str | int]) -> tuple[list[str], Any]:
    """A pydantic error location as config keys, and the section that holds its last key.

    The keys leave out the tags pydantic adds to a location inside a union of
    sections (``normalize.ZScore.params`` is ``normalize.params``).
    """
    keys: list[str] = []
    section: Any = None
    annotation: Any = ExperimentConfig
    for part in map(str, location):
        tags = _union_tags(annotation)
        if part in tags:
            annotation = tags[part]
            continue
        keys.append(part)
        section, annotation = annotation, _fields(annotation).get(part)
    return keys, section


def _members(annotation: Any) -> list[Any]:
    """The types a field annotation allows, ``None`` and ``Annotated`` stripped."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [member for arg in typing.get_args(annotation) for member in _members(arg)]
    return [] if annotation is type(None) else [annotation]


def _union_tags(annotation: Any) -> dict[str, Any]:
    """``{tag: section}`` for the members of a union of sections told apart by their ``type``."""
    tags = {}
    for member in _members(annotation):
        field = _fields(member).get("type")
        if typing.get_origin(field) is Literal:
            tags[str(typing.get_args(field)[0])] = member
    return tags


def _fields(annotation: Any) -> dict[str, Any]:
    """``{key: annotation}`` of a config section (pydantic model or dataclass); ``{}`` for anything else."""
    members = _members(annotation)
    section = members[0] if len(members) == 1 else None
    if isinstance(section, type) and issubclass(section, BaseModel):
        return {name: field.annotation for name, field in section.model_fields.items()}
    if isinstance(section, type) and dataclasses.is_dataclass(section):
        return typing.get_type_hints(section)
    return {}
