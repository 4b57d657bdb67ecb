"""Study files: ``medvol/studies/NAME.yaml`` (or a path), loaded and checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medvol.errors import MedvolError
from medvol.fetch import Source, parse_sources

STUDIES_DIR = Path(__file__).resolve().parents[1] / "studies"


@dataclass(frozen=True)
class Study:
    """A study file, loaded and checked."""

    name: str
    path: Path
    description: str
    budgets: dict[str, Path]
    split: str
    cases: Path | None
    checkpoint: str
    flip_tta: bool
    largest_component: bool
    metrics: list[str]
    published: dict[str, Any]
    data: list[Source]
    labels: dict[str, str]


def available_studies() -> list[str]:
    """Names of the studies shipped with medvol (``medvol/studies/``)."""
    return sorted(path.stem for path in STUDIES_DIR.glob("*.yaml"))


def load_study(name_or_path: str | Path) -> Study:
    """A study by name (``medvol/studies/NAME.yaml``) or by path.

    Raises:
        MedvolError: unknown name, unreadable file, or missing keys.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = STUDIES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise MedvolError(
                None, f"unknown study {name_or_path!r}; available: {', '.join(available_studies()) or 'none'}"
            )
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise MedvolError(path, f"cannot read the study file ({error})") from error
    if not isinstance(data, dict):
        raise MedvolError(
            path, "a study file must be a mapping (name, budgets, evaluate, metrics, published)"
        )
    missing = [key for key in ("name", "budgets", "evaluate", "metrics", "published") if key not in data]
    if missing:
        raise MedvolError(path, f"study file lacks {', '.join(missing)}")
    evaluate = data["evaluate"]
    _check_published(path, data["published"], [str(m) for m in data["metrics"]])
    return Study(
        name=str(data["name"]),
        path=path,
        description=str(data.get("description", "")),
        budgets={str(k): (path.parent / v).resolve() for k, v in data["budgets"].items()},
        split=str(evaluate.get("split", "test")),
        cases=None if evaluate.get("cases") is None else (path.parent / evaluate["cases"]).resolve(),
        checkpoint=str(evaluate.get("checkpoint", "best")),
        flip_tta=bool(evaluate.get("flip_tta", False)),
        largest_component=bool(evaluate.get("largest_component", False)),
        metrics=[str(m) for m in data["metrics"]],
        published=dict(data["published"]),
        data=parse_sources(data.get("data"), path),
        labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
    )


def _check_published(path: Path, published: Any, metrics: list[str]) -> None:
    """Every published row names its method, a figure of a table column, and its source.

    A row's ``source`` is a key of ``published.sources`` (paper, table and year); a study
    whose rows all come from one place may give ``published.source`` instead.
    """
    if not isinstance(published, dict) or not isinstance(published.get("rows"), list):
        raise MedvolError(path, "published must be a mapping with rows: [{method, METRIC: value, source}]")
    sources = published.get("sources") or {}
    for number, row in enumerate(published["rows"], start=1):
        if not isinstance(row, dict) or "method" not in row:
            raise MedvolError(path, f"published row {number} has no method")
        if not any(metric in row for metric in metrics):
            raise MedvolError(path, f"published row {number} ({row['method']}) gives none of {metrics}")
        if row.get("source") not in sources and not published.get("source"):
            raise MedvolError(
                path,
                f"published row {number} ({row['method']}) cites no source: give source: KEY of "
                f"published.sources ({', '.join(map(str, sources)) or 'none'}): paper, table and year",
            )
