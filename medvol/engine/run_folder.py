"""The run folder: the one place that knows what a run holds and what its files are called.

``medvol train`` writes a run folder; evaluate, predict, report, reproduce and
``medvol runs`` read it, all through :class:`RunFolder`::

    RUN_DIR/
      config.yaml            the resolved experiment config (read with medvol.config.load_config)
      split.json             case ids of each split
      fingerprint.json       what the data looked like (counts, classes, shapes)
      input.json             the model input a predictor must prepare (InputSpec)
      normalizer.json        the fitted intensity normaliser (scan tasks)
      environment.json       versions, device, seeds, precision
      metrics.jsonl          one JSON line per epoch
      checkpoints/best.pt    selected on validation; checkpoints/last.pt the latest epoch
      tensorboard/, mlflow.db, cache/
      mlflow-run.json        the MLflow store and run that mirror this run (tracking.mlflow)
      evaluation-NAME/       one medvol evaluate (EvaluationFolder)
      reproduce-NAME/        medvol reproduce's evaluation of the run
      report/                medvol report's output

A run folder copied elsewhere is still whole: nothing in it points back to the
data, except ``config.yaml``'s ``data.root``, which only training, validation
and evaluation of split ids need.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medvol.errors import MedvolError

if TYPE_CHECKING:
    from medvol.config import ExperimentConfig

Checkpoint = Literal["best", "last"]

EVALUATION_PREFIX = "evaluation-"


@dataclass(frozen=True)
class InputSpec:
    """What a model takes, as training prepared it.

    Attributes:
        task: the data kind (``data.task``), e.g. ``"segmentation"``.
        channels: image channels ``C``.
        num_classes: classes ``K`` of the model's output.
        shape: a classifier's fixed input ``(X, Y, Z)`` in voxels; ``None``
            for segmenters (any size, sliding windows of ``patch_size``).
        patch_size: a segmenter's sliding-window size ``(X, Y, Z)``, if set.
    """

    task: str
    channels: int
    num_classes: int
    shape: tuple[int, int, int] | None = None
    patch_size: tuple[int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path) -> InputSpec:
        try:
            return cls(
                task=str(data["task"]),
                channels=int(data["channels"]),
                num_classes=int(data["num_classes"]),
                shape=_triple(data.get("shape")),
                patch_size=_triple(data.get("patch_size")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise MedvolError(source, f"not a valid input spec ({error})") from error


def _triple(value: Any) -> tuple[int, int, int] | None:
    if value is None:
        return None
    x, y, z = (int(v) for v in value)
    if min(x, y, z) < 1:
        raise ValueError(f"sizes must be positive, got {value!r}")
    return x, y, z


class EvaluationFolder:
    """``RUN_DIR/evaluation-NAME``: what one ``medvol evaluate`` wrote."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def name(self) -> str:
        """``NAME`` of ``evaluation-NAME`` (``val``, ``test`` or a manifest's stem)."""
        return self.path.name.removeprefix(EVALUATION_PREFIX)

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def cases(self) -> Path:
        return self.path / "cases.csv"

    @property
    def predictions(self) -> Path:
        """Folder of predicted label maps, ``CASE.nii.gz`` (segmentation)."""
        return self.path / "predictions"

    @property
    def overlays(self) -> Path:
        """Slices of image, label and prediction per case for the report (segmentation)."""
        return self.path / "overlays.npz"

    def prediction(self, case_id: str) -> Path:
        return self.predictions / f"{case_id}.nii.gz"

    def read_summary(self) -> dict[str, Any]:
        """``summary.json`` (see :func:`read_summary`)."""
        return read_summary(self.summary)


def read_summary(path: str | Path) -> dict[str, Any]:
    """An evaluation's ``summary.json``, or the one inside an evaluation folder.

    Raises:
        MedvolError: missing, unreadable or not an evaluation summary.
    """
    path = Path(path)
    if path.is_dir():
        path = EvaluationFolder(path).summary
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise MedvolError(path, "no evaluation summary here (run medvol evaluate)") from error
    except (OSError, ValueError) as error:
        raise MedvolError(path, f"cannot read the evaluation summary ({error})") from error
    if not isinstance(data, dict) or "task" not in data:
        raise MedvolError(path, "not a medvol evaluation summary")
    return data


class RunFolder:
    """A run folder's files by name (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.split = self.path / "split.json"
        self.fingerprint = self.path / "fingerprint.json"
        self.input_spec = self.path / "input.json"
        self.normalizer = self.path / "normalizer.json"
        self.environment = self.path / "environment.json"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.tensorboard = self.path / "tensorboard"
        self.mlflow_db = self.path / "mlflow.db"
        self.mlflow_run = self.path / "mlflow-run.json"
        self.cache = self.path / "cache"
        self.report = self.path / "report"

    @property
    def name(self) -> str:
        return self.path.name

    def checkpoint(self, which: Checkpoint) -> Path:
        return self.checkpoints / f"{which}.pt"

    def evaluation(self, name: str) -> EvaluationFolder:
        """``evaluation-NAME`` (``val``, ``test`` or a manifest's stem)."""
        return EvaluationFolder(self.path / f"{EVALUATION_PREFIX}{name}")

    def reproduction(self, name: str) -> EvaluationFolder:
        """``reproduce-NAME``: the one evaluation ``medvol reproduce`` makes of this run."""
        return EvaluationFolder(self.path / f"reproduce-{name}")

    def evaluations(self) -> list[EvaluationFolder]:
        """Every evaluation folder, sorted by name."""
        return [EvaluationFolder(p) for p in sorted(self.path.glob(f"{EVALUATION_PREFIX}*")) if p.is_dir()]

    # -- checks

    def require(self) -> RunFolder:
        """Refuse a path that is not a run folder (no folder, or no ``config.yaml``)."""
        if not self.path.exists():
            raise MedvolError(self.path, "run folder not found")
        if not self.path.is_dir():
            raise MedvolError(self.path, "not a run folder (written by `medvol train`)")
        if not self.config.is_file():
            raise MedvolError(self.path, "not a medvol run folder: config.yaml is missing")
        return self

    def existing_checkpoint(self, which: Checkpoint) -> tuple[Checkpoint, Path]:
        """The checkpoint to load: ``best`` falls back to ``last`` when the run never validated.

        Raises:
            MedvolError: no such checkpoint.
        """
        path = self.checkpoint(which)
        if which == "best" and not path.is_file():
            which, path = "last", self.checkpoint("last")
        if not path.is_file():
            raise MedvolError(self.path, f"no checkpoint to load: {path.relative_to(self.path)} is missing")
        return which, path

    # -- reading

    def read_config(self, factories: bool = True) -> ExperimentConfig:
        """``config.yaml`` through the typed loader (``factories``: see ``medvol.config.parse_config``).

        Run folders written by medvol 0.1.0 are read as medvol reads them now:
        MedMNIST classifiers declared ``data.task: classification`` (now
        ``medmnist-classification``), and classifiers on scan files gave their
        input shape as ``data.patch_size`` (now ``data.input_shape``).
        """
        import yaml

        from medvol.config import load_config

        self.require()
        try:
            data = (yaml.safe_load(self.config.read_text()) or {}).get("data", {})
        except (OSError, yaml.YAMLError, AttributeError):
            data = {}  # load_config says what is wrong
        upgrades = []
        if data.get("task") == "classification" and data.get("patch_size") is not None:
            upgrades = [f"data.input_shape={data['patch_size']}", "data.patch_size=null"]
        if data.get("task") == "classification" and str(data.get("root", "")).lower().endswith(".npz"):
            upgrades = ["data.task=medmnist-classification"]
        return load_config(self.config, upgrades, factories=factories)

    def read_json(self, path: Path) -> dict[str, Any]:
        """A JSON object file of this run.

        Raises:
            MedvolError: missing, unreadable or not an object, naming the file.
        """
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as error:
            raise MedvolError(path, "missing: the run folder is incomplete") from error
        except (OSError, ValueError) as error:
            raise MedvolError(path, f"cannot read it ({error})") from error
        if not isinstance(data, dict):
            raise MedvolError(path, "expected a JSON object")
        return data

    def read_split(self) -> dict[str, Any]:
        return self.read_json(self.split)

    def split_ids(self, split: str) -> list[str]:
        """The case ids of ``split`` in ``split.json``.

        Raises:
            MedvolError: ``split.json`` lists no such split.
        """
        ids = self.read_split().get(split)
        if split == "test" and not isinstance(ids, list):
            raise MedvolError(
                self.split,
                "runs on scan folders have no official test split (split.json lists train and val "
                "only); evaluate held-out cases with --cases MANIFEST.csv",
            )
        if not isinstance(ids, list):
            raise MedvolError(self.split, f"no list of {split} case ids")
        return [str(case_id) for case_id in ids]

    def read_input_spec(self) -> InputSpec:
        """What the model takes (``input.json``).

        Run folders written before ``input.json`` existed: the spec is rebuilt
        from ``config.yaml`` and, for a classifier's input shape, ``fingerprint.json``.
        """
        if self.input_spec.is_file():
            return InputSpec.from_dict(self.read_json(self.input_spec), self.input_spec)
        config = self.read_config()
        shape = None
        if config.data.task != "segmentation":
            shape = _triple(self.read_json(self.fingerprint).get("shape"))
        return InputSpec(
            task=config.data.task,
            channels=int(config.model.options.get("in_channels", 1)),
            num_classes=config.data.num_classes,
            shape=shape,
            patch_size=config.data.patch_size if config.data.task == "segmentation" else None,
        )
