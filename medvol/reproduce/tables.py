"""``results.md``: the comparison table in Markdown, from what ``results.json`` holds."""

from __future__ import annotations

from typing import Any

from medvol.evaluation.summary import format_interval
from medvol.reproduce.ledger import TEST_LEDGER
from medvol.reproduce.scores import THRESHOLD_RULE

SPLIT_NAMES = {"val": "validation", "train": "training"}  # how a split is named in a table


CROSS_VALIDATION_NOTE = (
    "Cross-validation mean as nnU-Net's cross-validation summary computes it: the validation cases "
    "of the folds run, each segmented by the model of its fold (which did not train on it), pooled; "
    "per seed, each column is the mean over the pooled cases (a case where the value is undefined "
    "left out), and the table gives its mean over seeds with the 95% Student-t interval over seeds, "
    "clipped to the metric's range (none with one seed). Spread over folds: the lowest and highest "
    "fold mean (each fold's mean over its cases, averaged over seeds); results.json also gives the "
    "t-interval over folds (cross_validation.over_folds)."
)


COLUMN_NAMES = {
    "auc": "AUC",
    "accuracy": "ACC at 0.5",
    "balanced_accuracy": "balanced ACC at 0.5",
    "accuracy_at_val_threshold": "ACC at val. threshold",
    "balanced_accuracy_at_val_threshold": "balanced ACC at val. threshold",
    "dice_1": "Dice 1",
    "dice_2": "Dice 2",
}


def format_results(results: dict[str, Any], title: bool = True) -> str:
    """The comparison table in Markdown and what was scored how often; ``title=False``: no heading."""
    metrics = list(results["over_seeds"])
    labels = {**COLUMN_NAMES, **(results.get("labels") or {})}
    lines = [f"# {results['study']} ({results['budget']} budget)", ""] if title else []
    lines += [results["description"], "", _scored_line(results), ""]
    if results["protocol_changed"]:
        lines += [f"**Protocol changed by overrides {results['overrides']}: not the study's numbers.**", ""]
    thresholds = [run["val_threshold"]["threshold"] for run in results["runs"] if "val_threshold" in run]
    if thresholds:
        lines += [
            "ACC and balanced ACC *at 0.5* threshold the class-1 probability at 0.5; *at val. threshold*, "
            f"at the threshold that {THRESHOLD_RULE}, chosen per seed: "
            + ", ".join(f"{t:.4f}" for t in thresholds)
            + ".",
            "",
        ]
    lines += ["| | " + " | ".join(labels.get(m, m) for m in metrics) + " |", "|---|" + "---|" * len(metrics)]
    over = results["over_seeds"]
    if results.get("cross_validation"):
        lines += _cross_validation_rows(results, metrics)
    else:
        lines += _seed_rows(results, metrics)
    baseline = results.get("baseline")
    if baseline:
        counts = baseline["train_counts"]
        cells = [_plain(baseline["metrics"].get(m)) for m in metrics]
        lines.append(
            f"| majority class (class {baseline['class']}: {counts[str(baseline['class'])]} of "
            f"{sum(counts.values())} training cases), no model | " + " | ".join(cells) + " |"
        )
    published = results["published"]
    keys = _source_keys(published)
    for row in published.get("rows", []):
        values = [_plain(row.get(m)) for m in metrics]
        lines.append(
            f"| {row['method']} (published [{keys.index(_row_source(row, published)) + 1}]) | "
            + " | ".join(values)
            + " |"
        )
    lines.append("")
    if any((over.get(m) or {}).get("clipped") for m in metrics):
        lines += ["† The t-interval reached outside the metric's range and was clipped to it.", ""]
    if results.get("cross_validation"):
        lines += [CROSS_VALIDATION_NOTE, ""]
    for number, key in enumerate(keys, start=1):
        lines += [f"[{number}] {(published.get('sources') or {}).get(key, key)}", ""]
    for data in results.get("data", []):
        checked = "verified" if data["verified"] else "not verified: extracted without medvol"
        what = f"archive {data['archive']}" if data["archive"] else data["path"]
        lines += [f"Data: `{data['path']}` in the data folder ({what}, MD5 {data['md5']}, {checked}).", ""]
    times = ", ".join(f"{_run_label(r)}: {r['train_seconds'] / 60:.1f} min" for r in results["runs"])
    epochs = ", ".join(f"{_run_label(r)}: {r['epoch']}" for r in results["runs"])
    lines += [f"Training time (sum of epoch times): {times}. Evaluated epochs: {epochs}.", ""]
    return "\n".join(lines)


def _seed_rows(results: dict[str, Any], metrics: list[str]) -> list[str]:
    """The mean over seeds, the lowest and highest seed, and each seed's row."""
    count = len(results["seeds"])
    over = results["over_seeds"]
    interval = " [95% t-interval]" if count > 1 else " (no interval)"
    lines = [_row(f"medvol, mean over {_count(count, 'seed')}{interval}", _mean_cells(over, metrics))]
    if count > 1:
        lines.append(_row(f"medvol, lowest – highest of {count} seeds", _range_cells(over, metrics)))
    for run in results["runs"]:
        lines.append(
            f"| seed {run['seed']} [95% bootstrap interval over cases] | {_run_cells(run, metrics)} |"
        )
    return lines


def _cross_validation_rows(results: dict[str, Any], metrics: list[str]) -> list[str]:
    """The pooled mean of the folds run (how many of how many in its label), its spread, each fold."""
    cv = results["cross_validation"]
    folds, n_folds, count = cv["folds"], cv["n_folds"], len(results["seeds"])
    listed = ", ".join(map(str, folds))
    what = (
        f"{n_folds}-fold cross-validation (folds {listed})"
        if len(folds) == n_folds
        else f"{len(folds)} of {n_folds} folds (folds {listed}; not a {n_folds}-fold mean)"
    )
    over, spread = results["over_seeds"], cv["over_folds"]
    label = (
        f"medvol, {what}: per-case mean over the {cv['cases']} pooled validation cases, mean over "
        f"{_count(count, 'seed')}{' [95% t-interval over seeds]' if count > 1 else ' (no interval)'}"
    )
    lines = [_row(label, _mean_cells(over, metrics))]
    if len(folds) > 1:
        label = f"medvol, lowest – highest of the {len(folds)} folds (fold means over seeds)"
        lines.append(_row(label, _range_cells(spread, metrics)))
    if count > 1:
        label = f"medvol, lowest – highest of {count} seeds (pooled means)"
        lines.append(_row(label, _range_cells(over, metrics)))
    for fold in cv["per_fold"]:
        name = f"fold {fold['fold']} ({fold['cases']} case{'' if fold['cases'] == 1 else 's'})"
        if count == 1:
            run = next(r for r in results["runs"] if r["fold"] == fold["fold"])
            cells = _run_cells(run, metrics)
            lines.append(f"| {name} [95% bootstrap interval over cases] | {cells} |")
            continue
        cells = " | ".join(_fold_cell(fold["over_seeds"].get(m) or {}) for m in metrics)
        lines.append(f"| {name}, mean over {count} seeds (lowest – highest seed) | {cells} |")
    return lines


def _run_cells(run: dict[str, Any], metrics: list[str]) -> str:
    """One run's value of each metric with its bootstrap interval over cases."""
    return " | ".join(
        format_interval(*(run["metrics"][m].get(k) for k in ("estimate", "low", "high"))) for m in metrics
    )


def _fold_cell(entry: dict[str, Any]) -> str:
    if entry.get("mean") is None:
        return "undefined"
    return f"{entry['mean']:.4f} ({_range_cell(entry)})"


def _run_label(run: dict[str, Any]) -> str:
    return f"seed {run['seed']}" if run.get("fold") is None else f"fold {run['fold']} seed {run['seed']}"


def _evaluated_with(evaluated: dict[str, Any]) -> str:
    """The checkpoint scored, and the flip TTA and largest components when the study asks for them."""
    tta = ", averaged over the flips the recipe trains with (flip TTA)" if evaluated.get("flip_tta") else ""
    kept = (
        ", the largest connected component of each class kept" if evaluated.get("largest_component") else ""
    )
    return f"checkpoint {evaluated['checkpoint']}{tta}{kept}"


def _scored_line(results: dict[str, Any]) -> str:
    """How many times the held-out cases were scored, and for which recipes."""
    evaluated = results["evaluated"]
    seeds = len(results["seeds"])
    cv = results.get("cross_validation")
    if cv:
        return (
            "**Scored: the validation cases of each fold, once per fold and seed "
            f"({_count(len(cv['folds']), 'fold')} × {_count(seeds, 'seed')}), "
            f"{_evaluated_with(evaluated)}.** "
            "The study has no test split."
        )
    if evaluated["split"] != "test" or evaluated["cases"]:
        return (
            f"**Scored: the {evaluated['cases'] or SPLIT_NAMES.get(evaluated['split'], evaluated['split'])} "
            f"cases, once per seed ({_count(seeds, 'seed')}), {_evaluated_with(evaluated)}.** "
            "The study has no test split."
        )
    record = results.get("test_evaluations") or {"count": 0, "by_recipe": []}
    recipes = "; ".join(
        f"recipe `{group['recipe']}` ({group['fingerprint']}), seeds {', '.join(map(str, group['seeds']))}"
        for group in record["by_recipe"]
    )
    return (
        f"**Test split scored {_times(record['count'])} from this output folder** "
        f"(`{record.get('record', TEST_LEDGER)}`): {recipes}. Checkpoint {evaluated['checkpoint']}, "
        "chosen on validation data only."
    )


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _row(label: str, cells: list[str]) -> str:
    """One Markdown table row: the label, then the cells."""
    return f"| {label} | " + " | ".join(cells) + " |"


def _mean_cells(over: dict[str, Any], metrics: list[str]) -> list[str]:
    return [_mean_cell(over.get(m) or {}) for m in metrics]


def _range_cells(over: dict[str, Any], metrics: list[str]) -> list[str]:
    return [_range_cell(over.get(m) or {}) for m in metrics]


def _mean_cell(entry: dict[str, Any]) -> str:
    cell = format_interval(entry.get("mean"), entry.get("low"), entry.get("high"))
    return f"**{cell}**†" if entry.get("clipped") else f"**{cell}**"


def _range_cell(entry: dict[str, Any]) -> str:
    if entry.get("min") is None or entry.get("max") is None:
        return "undefined"
    return f"{entry['min']:.4f} – {entry['max']:.4f}"


def _plain(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "—"


def _row_source(row: dict[str, Any], published: dict[str, Any]) -> str:
    return str(row.get("source") or published.get("source"))


def _source_keys(published: dict[str, Any]) -> list[str]:
    """The sources the rows cite, in order of first use."""
    return list(dict.fromkeys(_row_source(row, published) for row in published.get("rows", [])))
