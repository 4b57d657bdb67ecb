"""The record of test evaluations (how often a test split was scored, for which recipes) and publishing."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from medvol.engine.run_folder import RunFolder
from medvol.errors import MedvolError
from medvol.io.atomic import atomic_path, write_json

if TYPE_CHECKING:
    from medvol.config import ExperimentConfig


TEST_LEDGER = "test-evaluations.json"

#: A run's small files published beside its evaluations: its environment, data fingerprint
#: and per-epoch record (training time), so a published run can be reused (:func:`restore_run`).
PUBLISHED_RUN_FILES = ("environment.json", "fingerprint.json", "metrics.jsonl")


def recipe_fingerprint(config: ExperimentConfig) -> str:
    """12 hex digits naming a recipe: its resolved config without the seed, output and data location."""
    from medvol.config import dump_config

    recipe = yaml.safe_load(dump_config(config))
    recipe.pop("tracking", None)
    recipe.get("train", {}).pop("seed", None)
    recipe.get("data", {}).pop("root", None)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def record_test_evaluations(out: Path, runs: list[tuple[int, RunFolder]], recipe: str) -> dict[str, Any]:
    """Add the runs' test evaluations to ``OUT/test-evaluations.json``; the record and a summary of it.

    Every ``summary.json`` of a test evaluation in a run folder (``reproduce-test``, and
    ``evaluation-test`` from ``medvol evaluate``) is one entry, found by run, folder and
    creation time; an entry is never removed, so the count survives a run that is removed
    and trained again. ``test_evaluation_number`` is ``medvol evaluate``'s own count for the run.

    Returns:
        ``{"count", "record": TEST_LEDGER, "by_recipe": [{"recipe", "fingerprint", "seeds"}]}``,
        ``seeds`` listing one seed per evaluation.
    """
    path = out / TEST_LEDGER
    entries = _read_test_evaluations(path)
    seen = {(e["run"], e["folder"], e["created"]) for e in entries}
    for seed, run in runs:
        for folder in (run.reproduction("test"), run.evaluation("test")):
            if not folder.summary.is_file():
                continue
            summary = folder.read_summary()
            key = (run.name, folder.path.name, summary.get("created"))
            if key in seen:
                continue
            seen.add(key)
            entries.append(
                {
                    "run": run.name,
                    "folder": folder.path.name,
                    "created": summary.get("created"),
                    "seed": seed,
                    "recipe": recipe,
                    "fingerprint": recipe_fingerprint(run.read_config()),
                    "checkpoint": summary.get("checkpoint"),
                    "epoch": summary.get("epoch"),
                    "test_evaluation_number": summary.get("test_evaluation_number", 1),
                    "medvol_version": summary.get("medvol_version"),
                }
            )
    if entries:
        write_json(path, {"split": "test", "evaluations": entries})
    groups: dict[tuple[str, str], list[int]] = {}
    for entry in entries:
        groups.setdefault((entry["recipe"], entry["fingerprint"]), []).append(int(entry["seed"]))
    return {
        "count": len(entries),
        "record": TEST_LEDGER,
        "by_recipe": [{"recipe": r, "fingerprint": f, "seeds": sorted(s)} for (r, f), s in groups.items()],
    }


def _read_test_evaluations(path: Path) -> list[dict[str, Any]]:
    """The entries of ``test-evaluations.json`` (none when it does not exist yet)."""
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())["evaluations"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MedvolError(
            path, f"cannot read the record of test evaluations ({error}); restore it"
        ) from error
    if not isinstance(entries, list):
        raise MedvolError(path, "the record of test evaluations must list them under 'evaluations'")
    return entries


def publish_results(
    out: Path, results: dict[str, Any], target: Path, places: dict[str, Path] | None = None
) -> list[Path]:
    """Copy what every figure of ``results.json`` comes from into ``target``, in the same layout.

    ``results.json``, ``test-evaluations.json``, ``configs/RUN.yaml`` and, for each run,
    ``runs/RUN/EVALUATION/summary.json`` and ``cases.csv`` and the run's
    :data:`PUBLISHED_RUN_FILES` (kilobytes; no checkpoint, no prediction). The machine's
    absolute paths are written by name: ``OUT`` for ``out``, and each of ``places``
    (``{"DATA": data_dir, ...}``), so what is committed names no folder of the machine
    that ran it.

    Returns:
        The files written.
    """
    relative = [Path("results.json"), Path(TEST_LEDGER)]
    for run in results["runs"]:
        relative.append(Path("configs") / f"{Path(run['folder']).name}.yaml")
        relative += [Path(run["folder"]) / name for name in PUBLISHED_RUN_FILES]
        for evaluation in run["evaluations"]:
            relative += [
                Path(run["folder"]) / evaluation / "summary.json",
                Path(run["folder"]) / evaluation / "cases.csv",
            ]
    named = {"OUT": out, **(places or {})}
    written = []
    for path in relative:
        if not (out / path).is_file():
            continue
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target / path) as temporary:
            text = (out / path).read_bytes().decode()  # bytes: cases.csv keeps its CRLF line ends
            temporary.write_bytes(without_machine_paths(text, named).encode())
        written.append(target / path)
    return written


def without_machine_paths(text: str, named: dict[str, Path]) -> str:
    """``text`` with each folder of ``named`` (and every path under it) written by its name.

    A folder's absolute and resolved forms are matched whole (``/a/out`` is not replaced in
    ``/a/out-2``), the longest first, so a folder inside another keeps its own name.
    """
    forms = {(str(form), name) for name, path in named.items() for form in (path.absolute(), path.resolve())}
    for folder, name in sorted(forms, key=lambda pair: -len(pair[0])):
        text = re.sub(re.escape(folder) + r"(?![\w.-])", name, text)
    return text


def restore_run(source: Path, run: RunFolder, places: dict[str, Path]) -> dict[str, Any] | None:
    """Copy a run published in ``source`` (by ``--publish``) into the run folder ``run``.

    Its config (``configs/RUN.yaml`` as ``config.yaml``), each evaluation's ``summary.json``
    and ``cases.csv`` and its :data:`PUBLISHED_RUN_FILES` are copied with each name of
    ``places`` (``OUT``, ``DATA``, ``MEDVOL``) written back as the folder it names. A run
    published before its ``environment.json`` was, and listed first in ``results.json``, gets
    that file's ``environment`` (which is its own). No checkpoint: the run can be scored
    again only by training it again.

    Returns:
        The run's entry in ``source/results.json``; ``None`` when it is not published there.

    Raises:
        MedvolError: ``source`` holds no readable ``results.json``, or misses a file of the run.
    """
    listed = source / "results.json"
    try:
        published = json.loads(listed.read_text())
        runs = published["runs"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MedvolError(listed, f"not the results.json of a published reproduction ({error})") from error
    entry = next((e for e in runs if e.get("folder") == f"runs/{run.name}"), None)
    if entry is None:
        return None
    copies = {source / "configs" / f"{run.name}.yaml": run.config}
    for name in PUBLISHED_RUN_FILES:
        if (source / entry["folder"] / name).is_file():
            copies[source / entry["folder"] / name] = run.path / name
    for evaluation in entry["evaluations"]:
        for name in ("summary.json", "cases.csv"):
            copies[source / entry["folder"] / evaluation / name] = run.path / evaluation / name
    for origin, destination in copies.items():
        if not origin.is_file():
            raise MedvolError(origin, f"missing from the published run {entry['folder']}; publish it again")
        copy_with_machine_paths(origin, destination, places)
    if not run.environment.is_file() and runs[0] is entry and published.get("environment"):
        text = with_machine_paths(json.dumps(published["environment"]), places)
        write_json(run.environment, json.loads(text))
    return dict(entry)


def copy_with_machine_paths(origin: Path, destination: Path, places: dict[str, Path]) -> None:
    """Write a published file into place, each name of ``places`` written back as its folder."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(destination) as temporary:  # bytes: cases.csv keeps its CRLF line ends
        temporary.write_bytes(with_machine_paths(origin.read_bytes().decode(), places).encode())


def with_machine_paths(text: str, named: dict[str, Path]) -> str:
    """The inverse of :func:`without_machine_paths`: each name of ``named`` that starts a path
    (``OUT``, ``OUT/runs/r``), written as the folder it names."""
    if not named:
        return text
    pattern = r"(?<![\w./-])(" + "|".join(map(re.escape, named)) + r")(?![\w.-])"
    return re.sub(pattern, lambda match: str(named[match.group(1)].absolute()), text)
