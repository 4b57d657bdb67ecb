"""``medvol reproduce NAME``: a published table, re-run end to end with seeds and confidence intervals.

A study is a YAML file in ``medvol/studies/`` (shipped with medvol; or any
path given as NAME)::

    name: adrenalmnist3d
    description: one line
    budgets: {cpu: recipes/adrenalmnist3d-resnet18-cpu.yaml, full: recipes/adrenalmnist3d-resnet18.yaml}
    data:                                       # medvol.fetch: where the recipes' data comes from
      - {path: adrenalmnist3d/adrenalmnist3d.npz, url: https://..., md5: bbd3...}
    evaluate: {split: test, checkpoint: best}   # what is scored once, after training
    metrics: [auc, accuracy]                    # the columns of the table
    published:
      source: citation of the published figures
      rows: [{method: ResNet-18+3D, auc: 0.827, accuracy: 0.721}, ...]

A recipe's relative ``data.root`` names a path in the data folder
(``medvol.fetch.data_folder``); the study's data there is downloaded and
verified first (``medvol.fetch``). A ``data.root`` given with ``--set`` is used
as given, and nothing is downloaded.

For each seed ``0 .. K-1`` the budget's experiment config is trained with
``train.seed`` set (model selection uses validation data only, as the config
says), then evaluated once as ``evaluate`` says, with a case-level bootstrap
CI. The table gives, per metric, the mean over seeds with its 95% t-interval
(``medvol.evaluation.aggregate``), each seed's value with its bootstrap CI, and
the published figures. A finished seed is not trained or evaluated again, so
an interrupted reproduction continues where it stopped and the test split is
scored once per run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from medvol.engine.run_folder import RunFolder
from medvol.errors import MedvolError
from medvol.evaluation.summary import format_interval
from medvol.fetch import Fetched, Source, data_folder, fetch, parse_sources
from medvol.io.atomic import atomic_path, write_json
from medvol.logs import get_logger, track

logger = get_logger(__name__)

if TYPE_CHECKING:
    from medvol.config import ExperimentConfig

STUDIES_DIR = Path(__file__).resolve().parent / "studies"


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
    metrics: list[str]
    published: dict[str, Any]
    data: list[Source]


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
    return Study(
        name=str(data["name"]),
        path=path,
        description=str(data.get("description", "")),
        budgets={str(k): (path.parent / v).resolve() for k, v in data["budgets"].items()},
        split=str(evaluate.get("split", "test")),
        cases=None if evaluate.get("cases") is None else (path.parent / evaluate["cases"]).resolve(),
        checkpoint=str(evaluate.get("checkpoint", "best")),
        metrics=[str(m) for m in data["metrics"]],
        published=dict(data["published"]),
        data=parse_sources(data.get("data"), path),
    )


def reproduce(
    study: Study,
    budget: str,
    seeds: int,
    out: Path,
    overrides: list[str] | None = None,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """Train and evaluate ``seeds`` runs of a study's budget; write ``results.json`` and ``results.md``.

    Args:
        study: from ``load_study``.
        budget: a key of ``study.budgets`` (``cpu``, ``full``).
        seeds: number of seeds, ``0 .. seeds-1``.
        out: folder for the runs and the table.
        overrides: ``KEY=VALUE`` config overrides applied to every run; the
            table says that the protocol was changed.
        data_dir: the data folder (default ``medvol.fetch.data_folder()``).

    Returns:
        The content of ``results.json``.
    """
    from medvol.config import dump_config, load_config
    from medvol.engine.run_folder import RunFolder
    from medvol.engine.train import train
    from medvol.evaluation import aggregate, evaluate_run

    if budget not in study.budgets:
        raise MedvolError(study.path, f"no budget {budget!r}; this study has {sorted(study.budgets)}")
    if seeds < 1:
        raise MedvolError(None, f"--seeds must be at least 1, got {seeds}")
    overrides = list(overrides or [])
    data_root, fetched = prepare_data(study, budget, overrides, data_folder(data_dir))
    summaries: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for seed in track(range(seeds), f"reproduce {study.name}", "seed", logger):
        name = f"{study.name}-{budget}-seed{seed}"
        config = load_config(
            study.budgets[budget],
            [
                *overrides,
                f"train.seed={seed}",
                f"tracking.output_dir={out / 'runs'}",
                f"tracking.name={name}",
            ],
        )
        if data_root is not None:
            config = _with_data_root(config, data_root)
        run = RunFolder(out / "runs" / name)
        run_dir = run.path
        _check_same_recipe(run, dump_config(config))
        evaluation = run.reproduction(study.split if study.cases is None else "cases")
        evaluation_dir = evaluation.path
        started = time.perf_counter()
        if not evaluation.summary.is_file():
            if not _finished(run, config.train.epochs, config.train.early_stop_patience):
                print(f"[{study.name} seed {seed}] training {run_dir}", flush=True)
                train(config, resume=run.checkpoint("last").is_file())
            print(f"[{study.name} seed {seed}] evaluating ({study.split}, {study.checkpoint})", flush=True)
            evaluate_run(
                run_dir,
                split="val" if study.split == "val" else "test",
                cases=study.cases,
                checkpoint="last" if study.checkpoint == "last" else "best",
                out=evaluation_dir,
            )
        else:
            print(f"[{study.name} seed {seed}] already evaluated: {evaluation_dir}", flush=True)
        summary = evaluation.read_summary()
        summaries.append(summary)
        runs.append(
            {
                "seed": seed,
                "run_dir": str(run_dir),
                "train_seconds": _train_seconds(run_dir),
                "session_seconds": round(time.perf_counter() - started, 1),
                "epoch": summary.get("epoch"),
                "metrics": {m: _seed_metric(summary, m) for m in study.metrics},
            }
        )
        (out / "configs").mkdir(parents=True, exist_ok=True)
        (out / "configs" / f"{name}.yaml").write_text(dump_config(config))
    over_seeds = aggregate(summaries)["metrics"]
    results = {
        "study": study.name,
        "description": study.description,
        "budget": budget,
        "config": str(study.budgets[budget]),
        "overrides": overrides,
        "protocol_changed": bool(overrides),
        "evaluated": {
            "split": study.split,
            "cases": None if study.cases is None else str(study.cases),
            "checkpoint": study.checkpoint,
        },
        "data": [_data_entry(item) for item in fetched],
        "seeds": list(range(seeds)),
        "runs": runs,
        "over_seeds": {m: over_seeds.get(m) for m in study.metrics},
        "published": study.published,
        "environment": _environment(Path(runs[0]["run_dir"])),
    }
    write_json(out / "results.json", results)
    with atomic_path(out / "results.md") as temporary:
        temporary.write_text(format_results(results))
    return results


def prepare_data(
    study: Study, budget: str, overrides: list[str], data_dir: Path
) -> tuple[Path | None, list[Fetched]]:
    """The budget recipe's data in ``data_dir``, fetched and verified.

    Returns:
        The ``data.root`` to train on (``None``: the recipe's own, absolute or
        set with ``--set``), and the study's data entries it uses.
    """
    from medvol.config import load_config

    if any(override.partition("=")[0].strip() == "data.root" for override in overrides):
        return None, []
    root = load_config(study.budgets[budget], overrides).data.root
    if root.is_absolute():
        return None, []
    used = [source for source in study.data if Path(source.path) in (root, *root.parents)]
    return data_dir / root, [fetch(source, data_dir) for source in used]


def _with_data_root(config: ExperimentConfig, root: Path) -> ExperimentConfig:
    return config.model_copy(update={"data": config.data.model_copy(update={"root": root})})


def _data_entry(item: Fetched) -> dict[str, Any]:
    source = item.source
    return {
        "path": source.path,
        "url": source.url,
        "md5": source.md5,
        "archive": source.archive,
        "location": str(item.location),
        "verified": item.verified,
    }


def _check_same_recipe(run: RunFolder, config_text: str) -> None:
    """Refuse to continue or reuse a run trained with another recipe (study config or ``--set`` changed).

    ``tracking`` (where the run is written) is not part of the recipe. The run's
    config is read with the typed loader, so a run folder of an earlier medvol
    compares by what it means, not by how it was spelt.
    """
    from medvol.config import dump_config

    if not run.config.is_file():
        return
    before = yaml.safe_load(dump_config(run.read_config()))
    now = yaml.safe_load(config_text)
    changed = sorted(k for k in (before.keys() | now.keys()) - {"tracking"} if before.get(k) != now.get(k))
    if changed:
        raise MedvolError(
            run.path,
            f"was trained with another recipe (changed since: {', '.join(changed)}); reproduce into "
            "another --out folder, or remove this run",
        )


def _finished(run: RunFolder, epochs: int, patience: int | None) -> bool:
    """Whether the run's last checkpoint holds its final epoch or its early stop."""
    last = run.checkpoint("last")
    if not last.is_file():
        return False
    from medvol.engine.checkpoint import load_checkpoint

    progress = load_checkpoint(last)["progress"]
    stopped_early = patience is not None and int(progress["stale_validations"]) >= patience
    return int(progress["epoch"]) >= epochs or stopped_early


def _train_seconds(run_dir: Path) -> float:
    from medvol.engine.tracking import read_metrics

    return round(sum(float(record.get("seconds", 0.0)) for record in read_metrics(run_dir)), 1)


def _seed_metric(summary: dict[str, Any], name: str) -> dict[str, Any]:
    """One seed's value of ``name`` with its case-level bootstrap CI."""
    metrics = summary.get("metrics") or {}
    if summary.get("task") == "classification":
        entry = metrics.get(name) or {}
        return {"estimate": entry.get("estimate"), "low": entry.get("low"), "high": entry.get("high")}
    metric, _, value = name.rpartition("_")
    entry = (metrics.get(value) or {}).get(metric) or {}
    return {"estimate": entry.get("mean"), "low": entry.get("low"), "high": entry.get("high")}


def _environment(run_dir: Path) -> dict[str, Any]:
    from medvol.engine.run_folder import RunFolder

    run = RunFolder(run_dir)
    return run.read_json(run.environment) if run.environment.is_file() else {}


def format_results(results: dict[str, Any]) -> str:
    """The comparison table in Markdown."""
    metrics = list(results["over_seeds"])
    header = "| | " + " | ".join(metrics) + " |"
    rule = "|---|" + "---|" * len(metrics)
    lines = [
        f"# {results['study']} ({results['budget']} budget)",
        "",
        results["description"],
        "",
        f"Evaluated once per seed on: {results['evaluated']['cases'] or results['evaluated']['split']}"
        f" (checkpoint {results['evaluated']['checkpoint']}); seeds {results['seeds']}.",
    ]
    if results["protocol_changed"]:
        lines += ["", f"**Protocol changed by overrides {results['overrides']}: not the study's numbers.**"]
    lines += ["", header, rule]
    over = results["over_seeds"]
    cells = []
    for metric in metrics:
        entry = over.get(metric) or {}
        cells.append(format_interval(entry.get("mean"), entry.get("low"), entry.get("high")))
    lines.append(
        f"| medvol, mean over {len(results['seeds'])} seed(s) [95% t-CI] | " + " | ".join(cells) + " |"
    )
    for run in results["runs"]:
        seed_cells = [
            format_interval(*(run["metrics"][m].get(k) for k in ("estimate", "low", "high"))) for m in metrics
        ]
        lines.append(f"| seed {run['seed']} [95% bootstrap CI] | " + " | ".join(seed_cells) + " |")
    for row in results["published"].get("rows", []):
        values = [f"{row[m]:.4f}" if m in row else "—" for m in metrics]
        lines.append(f"| {row['method']} (published) | " + " | ".join(values) + " |")
    lines += ["", f"Published figures: {results['published'].get('source', 'see the study file')}.", ""]
    for data in results.get("data", []):
        checked = "verified" if data["verified"] else "not verified: extracted without medvol"
        what = f"archive {data['archive']}" if data["archive"] else data["path"]
        lines += [f"Data: {data['location']} ({what}, MD5 {data['md5']}, {checked}).", ""]
    times = ", ".join(f"seed {r['seed']}: {r['train_seconds'] / 60:.1f} min" for r in results["runs"])
    lines += [f"Training time (sum of epoch times): {times}.", ""]
    return "\n".join(lines)
