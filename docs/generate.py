"""Write the parts of the documentation that are derived from medvol's code.

Usage (from the repository root, in the environment where medvol is installed)::

    python docs/generate.py          # rewrite the generated parts
    python docs/generate.py --check  # change nothing; exit 1 naming the stale files

What it writes:

- ``docs/cli/<verb>.md``: only the block between the ``<!-- BEGIN GENERATED ...``
  and ``<!-- END GENERATED -->`` markers, which holds ``medvol VERB --help``
  taken from ``medvol.cli.build_parser()``; the rest of each page is
  hand-written. A verb without a page gets a stub page to fill in.
  ``docs/cli/overview.md`` holds ``medvol --help`` the same way. The help is
  formatted at a fixed width (88 columns) so that it does not depend on the
  terminal.
- ``docs/results.md``: only the blocks between ``<!-- BEGIN GENERATED: results/DIR/results.json ...``
  and ``<!-- END GENERATED -->``, each the table ``medvol reproduce`` wrote for that
  reproduction (``medvol.reproduce.format_results``), made again from the
  ``results.json`` committed in ``docs/results/DIR/`` (``medvol reproduce ... --publish
  docs/results/DIR`` copies it there with each evaluation's ``summary.json`` and
  ``cases.csv``). The prose around the blocks is hand-written.
- ``docs/config-reference.md``, whole: every key of an experiment config.

  - The typed sections come from the pydantic models in ``medvol.config``
    (``ExperimentConfig`` and the section models its fields name): key, type,
    constraints (``ge``/``gt``...), default. A key's description is, in this
    order of preference, its ``Field(description=...)``, else the ``# comment``
    that ends its line in ``medvol/config.py`` (read with ``ast`` and
    ``tokenize``, so the code is the single source), else the entry for it in
    ``NOTES`` below. Adding a comment or a ``Field`` description to a key in
    ``medvol/config.py`` therefore updates this page; ``NOTES`` only fills in
    the keys that have neither.
  - ``preprocess`` and ``augment`` come from the dataclasses
    ``medvol.transforms.PreprocessConfig`` and ``medvol.augment.AugmentConfig``:
    fields, types and defaults from ``dataclasses.fields``, descriptions from the
    ``Attributes:`` section of their docstrings.
  - ``normalize`` lists the normalisers (``Normalizer`` subclasses): their
    constructor parameters, with descriptions from their ``Args:`` docstrings.
  - ``model`` and ``loss`` list the registered names and the options of each
    (from the factories' signatures).

``tests/test_docs.py`` runs ``generated_files()`` and fails, naming this
command, when a committed file differs from what it returns.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import json
import re
import sys
import tokenize
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CLI_DOCS = DOCS / "cli"
CLI_OVERVIEW = CLI_DOCS / "overview.md"
CONFIG_REFERENCE = DOCS / "config-reference.md"
RESULTS_PAGE = DOCS / "results.md"
CONFIG_SOURCE = ROOT / "medvol" / "config.py"
COMMAND = "python docs/generate.py"
HELP_WIDTH = 88
END_MARKER = "<!-- END GENERATED -->"
BEGIN_PATTERN = re.compile(r"<!-- BEGIN GENERATED: [^\n]*? -->\n.*?" + re.escape(END_MARKER), re.DOTALL)
RESULTS_BLOCK = re.compile(
    r"<!-- BEGIN GENERATED: (results/[\w.-]+/results\.json)\b[^\n]*? -->\n.*?" + re.escape(END_MARKER),
    re.DOTALL,
)

#: Descriptions of config keys that have neither a ``Field(description=...)`` nor
#: a trailing comment in ``medvol/config.py``. A description in the code wins.
NOTES: dict[str, str] = {
    "data": "Where the cases are and how they are read.",
    "model": "The network.",
    "loss": "The training loss.",
    "optimizer": "The optimiser.",
    "schedule": "The learning-rate schedule.",
    "train": "The training loop: epochs, batches, precision, validation, device, seed.",
    "tracking": "Where the run folder goes and what records it.",
    "data.task": "The kind of data, which decides everything a run does with it (`medvol.tasks`): "
    "`segmentation` (label maps per case), `classification` (scan files with one class each, a CSV "
    "manifest) or `medmnist-classification` (a MedMNIST 3D `.npz` with its official split).",
    "data.split": "How the cases are divided into training and validation folds.",
    "data.num_classes": "Number of classes, background included for segmentation; must equal the model's "
    "`num_classes` (checked when the config is loaded), and for segmentation the values of `classes` "
    "must be 0 to `num_classes` − 1.",
    "data.patch_size": "Segmentation: training patch in voxels (after preprocessing); `null` trains on "
    "whole volumes. Validation and inference use sliding windows of this size.",
    "data.foreground_fraction": "Segmentation with a `patch_size`: the share of training patches centred on "
    "a labelled voxel (the others are placed uniformly); 1/3 as in nnU-Net. Raise it for small targets, "
    "see [training](training.md#foreground-aware-patch-sampling).",
    "data.input_shape": "Classification from scan files (required there): the model's input in voxels "
    "(after preprocessing); every case is centre-cropped/padded to it.",
    "data.cache_dir": "Folder of the memory-mapped cache of preprocessed cases; `null`: `cache/` in the run "
    "folder.",
    "data.num_workers": "DataLoader worker processes per training process.",
    "data.prefetch": "With `num_workers: 0`: a background thread reads, crops and collates the next "
    "training batches (two kept ready) while the model computes, pinned on CUDA; the same batches in the "
    "same order. `false` reads each batch between steps (e.g. to step through dataset code in a debugger). "
    "Loader workers already read ahead, so with `num_workers` > 0 it changes nothing.",
    "data.split.method": "`nnunet`: sorted case ids, shuffled k-fold with `seed` (nnU-Net's folds); "
    "`official`: the split stored in a MedMNIST file; `kfold`: patient-level folds "
    "(cases of one `patient_id` stay together); `file`: folds read from `file`; `separate`: every usable "
    "case of `data.root` trains and the cases of `val_root` validate (`fold`, `n_splits`, `seed`, `file` "
    "unused: setting them is refused).",
    "data.split.val_root": "With method `separate` (required there): the validation set, a folder or `.csv` "
    "manifest indexed like `data.root`; a case id, patient id or image content also in `data.root` is "
    "refused as a leak. `medvol evaluate RUN` scores these cases.",
    "data.split.fold": "Which fold is the validation set (0-based).",
    "data.split.n_splits": "Number of folds (`nnunet`, `kfold`).",
    "data.split.seed": "Seed of the fold shuffle; 12345 gives nnU-Net's folds.",
    "model.name": "A name from `medvol.models.available_models()`; see [models](#models).",
    "model.options": "Keyword options of that model; see [models](#models).",
    "loss.name": "A name from `medvol.losses.available_losses()`; see [losses](#losses).",
    "loss.options": "Keyword options of that loss; see [losses](#losses).",
    "optimizer.name": "`adam`, `adamw` or `sgd` (with Nesterov momentum).",
    "optimizer.lr": "Learning rate after warm-up, before the schedule scales it.",
    "optimizer.weight_decay": "Weight decay (decoupled for `adamw`).",
    "schedule.name": "`constant`, `multistep` (`milestones`, `gamma`), `cosine` or `poly` (`power`).",
    "schedule.gamma": "multistep: factor applied at each milestone.",
    "schedule.warmup_epochs": "Epochs of linear warm-up before the schedule starts.",
    "train.epochs": "Number of training epochs.",
    "train.batch_size": "Global batch size, split evenly over the processes under `torchrun`.",
    "train.amp": "Autocast precision: `bf16`, `fp16` (CUDA only, with gradient scaling), `none` (float32), "
    "or `auto`: `bf16` where the hardware computes in bfloat16 natively, else `none`.",
    "train.channels_last": "Weights and batches in `torch.channels_last_3d` memory layout; `auto`: on for "
    "the 3D ResNets, off for the segmenters.",
    "train.grad_clip": "Largest gradient norm (clipped before each step); `null`: no clipping.",
    "train.val_every": "Validate every this many epochs (and after the last one).",
    "train.metric_mode": "`max` when a larger `metric` is better (`dice`, `auc`), `min` for `loss`.",
    "train.device": "`auto` picks CUDA, then MPS, then the CPU.",
    "train.seed": "Seed of the weights, the batch order and the augmentation.",
    "tracking.output_dir": "Folder in which the run folder `NAME/` is made.",
    "tracking.name": "Name of the run folder; an existing one is only continued with `--resume`.",
    "tracking.tensorboard": "Write TensorBoard logs to `tensorboard/` in the run folder.",
    "tracking.mlflow": 'Also log to MLflow (`pip install "medvol[mlflow]"`).',
    "tracking.mlflow_uri": (
        "MLflow tracking URI; a server (`http://host:5000`) also gets the run's files; "
        "`null`: `mlflow.db` (SQLite) in the run folder."
    ),
}


# ---------------------------------------------------------------------------
# CLI help


class _FixedWidthFormatter(argparse.HelpFormatter):
    """argparse's formatter at ``HELP_WIDTH`` columns, whatever the terminal."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=HELP_WIDTH)


def _plain(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.formatter_class = _FixedWidthFormatter
    if hasattr(parser, "color"):  # Python 3.14+ colours help on a terminal
        parser.color = False
    return parser


def help_texts() -> dict[str, str]:
    """``{"": medvol --help, verb: medvol VERB --help}``, verbs in the parser's order."""
    from medvol.cli import build_parser

    parser = _plain(build_parser())
    texts = {"": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for verb, subparser in action.choices.items():
                texts[verb] = _plain(subparser).format_help()
    return {key: text.rstrip() + "\n" for key, text in texts.items()}


def help_block(command: str, text: str) -> str:
    return (
        f"<!-- BEGIN GENERATED: {command} --help, by {COMMAND}; edit medvol/cli.py instead -->\n"
        f"```text\n{text}```\n{END_MARKER}"
    )


def with_help(page: str, command: str, text: str, path: Path) -> str:
    """``page`` with its generated block replaced by ``command``'s help."""
    if len(BEGIN_PATTERN.findall(page)) != 1:
        raise SystemExit(f"{path}: expected one '<!-- BEGIN GENERATED ... {END_MARKER}' block")
    return BEGIN_PATTERN.sub(lambda _: help_block(command, text), page)


def stub_page(verb: str, text: str) -> str:
    return (
        f"# medvol {verb}\n\nTODO: what `medvol {verb}` is for, how it works, examples.\n\n"
        f"## Usage\n\n{help_block(f'medvol {verb}', text)}\n"
    )


def cli_pages() -> dict[Path, str]:
    """The CLI pages with fresh help blocks (a stub for a verb that has no page yet)."""
    pages: dict[Path, str] = {}
    for verb, text in help_texts().items():
        path = CLI_OVERVIEW if verb == "" else CLI_DOCS / f"{verb}.md"
        command = f"medvol {verb}".strip()
        if path.exists():
            pages[path] = with_help(path.read_text(encoding="utf-8"), command, text, path)
        else:
            pages[path] = stub_page(verb, text)
    return pages


# ---------------------------------------------------------------------------
# Types and defaults as a YAML writer sees them


def type_name(annotation: Any) -> str:
    """A type annotation in YAML terms: ``int``, ``path``, ``[float, float, float]``, ``... or null``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is typing.Literal:
        return " or ".join(f"`{json.dumps(value)}`" for value in args)
    if origin in (typing.Union, types.UnionType):
        present = [arg for arg in args if arg is not type(None)]
        return " or ".join([*map(type_name, present), *(["null"] if len(present) < len(args) else [])])
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        return "[" + ", ".join(type_name(arg) for arg in args) + "]"
    if origin in (list, set, frozenset) or (origin is not None and _is_sequence(origin)):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict or (origin is not None and _is_mapping(origin)):
        return "mapping"
    if isinstance(annotation, type):
        if issubclass(annotation, Path):
            return "path"
        if annotation in (bool, int, float, str):
            return annotation.__name__
        if _is_section(annotation):
            return "section"
    return str(annotation).replace("typing.", "")


def _is_sequence(origin: Any) -> bool:
    from collections.abc import Sequence

    return isinstance(origin, type) and issubclass(origin, Sequence) and not issubclass(origin, str)


def _is_mapping(origin: Any) -> bool:
    return isinstance(origin, type) and issubclass(origin, Mapping)


def _is_section(annotation: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def yaml_value(value: Any) -> str:
    """A default as it would be written in a config (JSON, which YAML reads the same)."""
    return f"`{json.dumps(_jsonable(value), ensure_ascii=False, default=repr)}`"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return value


def constraints(metadata: Iterable[Any]) -> str:
    """Pydantic's ``Field(ge=..., gt=...)`` bounds as ``≥ 0``, ``> 0``."""
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    parts = []
    for item in metadata:
        for attribute, symbol in symbols.items():
            bound = getattr(item, attribute, None)
            if bound is not None:
                parts.append(f"{symbol} {bound}")
    return ", ".join(parts)


def cell(text: str) -> str:
    """Table-cell text: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def table(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Descriptions from the source


def trailing_comments(path: Path) -> dict[str, dict[str, str]]:
    """``{class name: {field name: comment}}`` for fields annotated at class level with a ``# comment``."""
    source = path.read_text(encoding="utf-8")
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    found: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                    comment = comments.get(statement.end_lineno or statement.lineno)
                    if comment:
                        found.setdefault(node.name, {})[statement.target.id] = comment
    return found


def docstring_entries(obj: Any, section: str) -> dict[str, str]:
    """``{name: text}`` from a Google-style ``Args:`` or ``Attributes:`` docstring section."""
    entries: dict[str, str] = {}
    lines = inspect.cleandoc(obj.__doc__ or "").splitlines()
    try:
        start = lines.index(f"{section}:")
    except ValueError:
        return entries
    name, indent = None, None
    for line in lines[start + 1 :]:
        if not line.strip():
            if name is not None and indent is not None:
                break
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:
            break
        match = re.match(r"(\w+)(?: \(.*?\))?: (.*)", line.strip())
        if indent is None:
            indent = depth
        if depth == indent and match:
            name = match.group(1)
            entries[name] = match.group(2)
        elif name is not None:
            entries[name] += " " + line.strip()
    return entries


def paragraphs(obj: Any) -> list[str]:
    """The paragraphs of a docstring before its first ``Args:``/``Attributes:`` section, each on one line."""
    text = re.split(r"^\w+:$", inspect.cleandoc(obj.__doc__ or ""), maxsplit=1, flags=re.MULTILINE)[0]
    return [" ".join(paragraph.split()) for paragraph in text.split("\n\n") if paragraph.strip()]


def summary(obj: Any) -> str:
    """The first paragraph of a docstring, on one line."""
    found = paragraphs(obj)
    return found[0] if found else ""


def rst_to_markdown(text: str) -> str:
    """Docstring markup as Markdown: ``code`` → `code`, :func:`x` → `x`."""
    return re.sub(r":\w+:`([^`]*)`", r"`\1`", text.replace("``", "`"))


def describe_key(text: str) -> str:
    """A description for a config table, in YAML terms and as a sentence.

    Docstring markup becomes Markdown, Python's `None`/`True`/`False` become
    YAML's `null`/`true`/`false`, bare ``medvol.x.y`` names become code, the
    first letter is capitalised and a full stop ends it.
    """
    text = rst_to_markdown(text.strip())
    for python, yaml in (("None", "null"), ("True", "true"), ("False", "false")):
        text = text.replace(f"`{python}`", f"`{yaml}`")
    text = text.replace(" (see the module docstring)", " (see above)")
    pieces = re.split(r"(`[^`]*`)", text)
    text = "".join(
        piece if piece.startswith("`") else re.sub(r"\b(medvol(?:\.\w+)+(?:\(\))?)", r"`\1`", piece)
        for piece in pieces
    )
    if text and text[0].islower():
        text = text[0].upper() + text[1:]
    if text and text[-1] not in ".!?)":
        text += "."
    return text


# ---------------------------------------------------------------------------
# The config reference


def _section_anchor(path: str) -> str:
    return path.replace(".", "-")


def pydantic_sections(notes: dict[str, str], used: set[str]) -> list[str]:
    """One Markdown section per pydantic config section, depth first from ``ExperimentConfig``."""
    from medvol.config import ExperimentConfig

    comments = trailing_comments(CONFIG_SOURCE)
    dataclass_sections = {"preprocess", "normalize", "augment"}
    parts: list[str] = []

    def describe(model: Any, path: str) -> None:
        rows, children = [], []
        for name, field in model.model_fields.items():
            key = f"{path}.{name}" if path else name
            annotation = field.annotation
            description = field.description or comments.get(model.__name__, {}).get(name)
            if not description and key in notes:
                description = notes[key]
                used.add(key)
            kind = type_name(annotation)
            if _is_section(annotation):
                kind = f"[section](#{_section_anchor(key)})"
                children.append((annotation, key))
            elif key in dataclass_sections:
                optional = type(None) in typing.get_args(annotation)
                kind = f"[section](#{key})" + (" or null" if optional else "")
            bounds = constraints(field.metadata)
            if bounds:
                kind = f"{kind}, {bounds}"
            if field.is_required():
                default = "required"
            elif _is_section(annotation) or dataclasses.is_dataclass(field.default):
                default = "its defaults"
            else:
                default = yaml_value(field.get_default(call_default_factory=True))
            rows.append((f"`{name}`", kind, default, describe_key(description or "")))
        heading = f"`{path}`" if path else "Sections"
        anchor = _section_anchor(path) if path else "sections"
        intro = " ".join(paragraphs(model)) or notes.get(path, "") if path else "The top level: sections."
        intro = rst_to_markdown(intro)
        rows_table = table(("key", "type", "default", "description"), rows)
        parts.append(f"## {heading} {{#{anchor}}}\n\n{intro}\n\n{rows_table}")
        for child, key in children:
            describe(child, key)

    describe(ExperimentConfig, "")
    return parts


def dataclass_section(cls: Any, path: str, intro: str) -> str:
    hints = typing.get_type_hints(cls)
    descriptions = docstring_entries(cls, "Attributes")
    rows = []
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            default = yaml_value(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = yaml_value(field.default_factory())
        else:
            default = "required"
        description = describe_key(descriptions.get(field.name, ""))
        rows.append((f"`{field.name}`", type_name(hints[field.name]), default, description))
    return f"## `{path}` {{#{path}}}\n\n{intro}\n\n{table(('key', 'type', 'default', 'description'), rows)}"


def normalize_section() -> str:
    from medvol.transforms import Normalizer

    parts = [
        "## `normalize` {#normalize}\n\n"
        "An intensity normaliser, written `{type: NAME, params: {...}}` (the form `Normalizer.to_dict()` "
        "writes), from `medvol.transforms.normalize`: `type` is one of the names below and `params` its "
        "parameters (checked when the config is loaded; omitted ones keep the defaults below). "
        "A normaliser that learns statistics is fitted on "
        "the preprocessed training fold only, and what it learned is saved with the run "
        "(`normalizer.json`) for evaluation and prediction. Omitted or `null`: segmentation uses "
        "`ZScore` with `per_scan: true`; MedMNIST arrays are used as stored. With "
        "`use_foreground_mask: true`, statistics are taken over the foreground only: voxels whose "
        "label is > 0 when fitting on labelled training cases, otherwise voxels where any channel is "
        "nonzero. Outputs are float32."
    ]
    for kind in _subclasses(Normalizer):
        parameters = inspect.signature(kind).parameters
        hints = typing.get_type_hints(kind.__init__)
        descriptions = docstring_entries(kind, "Args")
        rows = [
            (
                f"`{name}`",
                type_name(hints.get(name, Any)),
                yaml_value(parameter.default),
                describe_key(descriptions.get(name, "")),
            )
            for name, parameter in parameters.items()
        ]
        parts.append(
            f"### `{kind.__name__}`\n\n{rst_to_markdown(summary(kind))}\n\n"
            f"{table(('param', 'type', 'default', 'description'), rows)}"
        )
    return "\n\n".join(parts)


def _subclasses(cls: Any) -> list[Any]:
    """Every subclass of ``cls``, depth first, in definition order."""
    found: list[Any] = []
    for child in cls.__subclasses__():
        found += [child, *_subclasses(child)]
    return found


def factory_section(title: str, anchor: str, intro: str, factories: Mapping[str, Callable[..., Any]]) -> str:
    names_by_options: dict[str, list[str]] = {}
    for name, factory in factories.items():
        options = []
        for option, parameter in inspect.signature(factory).parameters.items():
            if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            if parameter.default is inspect.Parameter.empty:
                options.append(f"`{option}` (required)")
            else:
                options.append(f"`{option}: {json.dumps(_jsonable(parameter.default), default=repr)}`")
        names_by_options.setdefault(", ".join(options) or "none", []).append(f"`{name}`")
    rows = [(", ".join(names), options) for options, names in names_by_options.items()]
    return f"## {title} {{#{anchor}}}\n\n{intro}\n\n{table(('name', 'options and defaults'), rows)}"


def config_reference() -> tuple[str, set[str]]:
    """The config reference page, and the ``NOTES`` keys it used."""
    from medvol import losses
    from medvol.augment import AugmentConfig
    from medvol.models import registry
    from medvol.transforms import PreprocessConfig

    used: set[str] = set()
    parts = [
        "# Configuration reference",
        f"<!-- Generated by {COMMAND} from medvol/config.py, medvol/transforms, medvol/augment, "
        "medvol/models and medvol/losses. Do not edit: change the code and rerun it. -->",
        "`medvol train CONFIG.yaml` reads an experiment config: a YAML file with the sections below. "
        "Unknown keys are errors that name the key and suggest the closest known one; "
        "`--set section.key=value` overrides any key (the value is read as YAML). "
        "The resolved config is saved in the run folder as `config.yaml`. Examples: "
        "`configs/` and `medvol/studies/recipes/` in the repository, and the "
        "[training guide](training.md).",
        "Types are given as YAML sees them: `path` is a string, relative to the directory "
        "`medvol` runs in; `[int, int, int]` is a list of three numbers; `null` is YAML's null.",
        *pydantic_sections(NOTES, used),
        dataclass_section(
            PreprocessConfig,
            "preprocess",
            "How every scan is put on the training grid before normalisation (segmentation): "
            "`medvol.transforms.PreprocessConfig`. Steps in order: reorient, resample, crop, pad; "
            "predictions are mapped back through the same steps. `{}` keeps the defaults.",
        ),
        normalize_section(),
        dataclass_section(
            AugmentConfig,
            "augment",
            "Random augmentation of the training samples: `medvol.augment.AugmentConfig`. "
            "Omitted or `null`: no augmentation; `{}`: the defaults below, "
            + rst_to_markdown(paragraphs(AugmentConfig)[-1][0].lower() + paragraphs(AugmentConfig)[-1][1:])
            + " Stages, in order: spatial (image and label with one random draw), bias field and MR "
            "artefacts, blur and noise, brightness/contrast/gamma; each `*_prob` is the probability of "
            "its stage for a sample. Spatial ranges are in voxels or degrees (so augment after resampling "
            "to near-isotropic spacing); noise levels are in image units (normalised images).",
        ),
        factory_section(
            "Models",
            "models",
            "`model.name` and the keys `model.options` accepts "
            "(`medvol.models.create_model(name, **options)`); names and keys are checked when the config is "
            "loaded, values when the model is built. Segmenters output `num_classes` logits per voxel, "
            "ResNets per case; `num_classes` must equal `data.num_classes`.",
            registry.model_factories(),
        ),
        factory_section(
            "Losses",
            "losses",
            "`loss.name` and the keys `loss.options` accepts (`medvol.losses.create_loss`), checked when "
            "the config is loaded like the model's (for `deep_supervision`, also the wrapped `loss` and its "
            "`loss_options`).",
            losses.loss_factories(),
        ),
    ]
    return "\n\n".join(parts) + "\n", used


# ---------------------------------------------------------------------------


def results_block(source: str) -> str:
    """The generated block of ``docs/results.md`` for ``docs/SOURCE`` (a committed ``results.json``)."""
    from medvol.reproduce import format_results

    path = DOCS / source
    if not path.is_file():
        raise SystemExit(
            f"{RESULTS_PAGE}: names {source}, which is not in docs/ (medvol reproduce --publish)"
        )
    table = format_results(json.loads(path.read_text(encoding="utf-8")), title=False)
    return (
        f"<!-- BEGIN GENERATED: {source}, by {COMMAND}; rerun medvol reproduce --publish instead -->\n"
        f"{table}{END_MARKER}"
    )


def results_page() -> dict[Path, str]:
    """``docs/results.md`` with each reproduction's table made again from its committed ``results.json``."""
    if not RESULTS_PAGE.is_file():
        return {}
    page = RESULTS_PAGE.read_text(encoding="utf-8")
    return {RESULTS_PAGE: RESULTS_BLOCK.sub(lambda match: results_block(match[1]), page)}


# ---------------------------------------------------------------------------


def generated_files() -> dict[Path, str]:
    """Every generated file and the content it must have."""
    return generate()[0]


def generate() -> tuple[dict[Path, str], set[str]]:
    """Every generated file with its content, and the ``NOTES`` keys used."""
    files = cli_pages()
    files[CONFIG_REFERENCE], used = config_reference()
    files.update(results_page())
    return files, used


def stale_files(files: Mapping[Path, str]) -> list[Path]:
    """The files whose committed content differs from ``files`` (or that are missing)."""
    return [
        path for path, text in files.items() if not path.exists() or path.read_text(encoding="utf-8") != text
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    files, used = generate()
    unused = sorted(set(NOTES) - used)
    if unused:
        print(f"note: NOTES entries not used (described in the code now, or gone): {', '.join(unused)}")
    stale = stale_files(files)
    for path in stale:
        relative = path.relative_to(ROOT)
        if args.check:
            print(f"stale: {relative}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(files[path], encoding="utf-8")
            print(f"wrote {relative}")
    if args.check and stale:
        print(f"the generated docs are out of date: run `{COMMAND}` and commit the result")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
