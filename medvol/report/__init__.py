"""``medvol report``: an HTML or Markdown report and model card for a run, with PNG figures.

``write_report(run_dir, out, fmt)`` reads only the run folder's own files and writes
``report.html`` (or ``report.md``) beside its PNG figures, linked by relative paths, so the
folder can be copied or zipped as it is, and a run folder copied away from its data still
gives the whole report:

- the model card: intended use, model, data and split, preprocessing, training settings,
  the metrics with their confidence intervals, and limitations derived from what is known
  (:mod:`medvol.report.card`);
- training curves from ``metrics.jsonl``;
- for each ``evaluation-*/`` folder written by ``medvol evaluate``: classification metrics,
  the ROC curve with its bootstrap band, the calibration diagram and the confusion matrix;
  or segmentation metrics per class, the per-case Dice table and distribution, and slice
  overlays of the best and the worst case, from the slices the evaluation saved
  (:mod:`medvol.report.sections`, figures in :mod:`medvol.report.figures`).

Every number comes from a file of the run (:mod:`medvol.report.read`); when there is no
evaluation the report says so instead of showing any. Blocks are rendered to HTML or
Markdown by :mod:`medvol.report.render`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from medvol.engine.tracking import MlflowRun
from medvol.errors import MedvolError
from medvol.io.atomic import atomic_path
from medvol.report.card import limitations, model_card
from medvol.report.read import RunFiles, read_run
from medvol.report.render import Block, Bullets, Heading, Paragraph, render_html, render_markdown
from medvol.report.sections import evaluation_section, training_section

Format = Literal["html", "md"]

__all__ = ["Format", "RunFiles", "limitations", "model_card", "read_run", "write_report"]


def write_report(run_dir: str | Path, out: str | Path | None = None, fmt: Format = "html") -> Path:
    """Write the report of a run and its figures into ``out`` (default ``RUN_DIR/report``).

    Returns:
        The path of ``report.html`` or ``report.md``.

    Raises:
        MedvolError: no run folder or config; an invalid config; an unknown format.
    """
    if fmt not in ("html", "md"):
        raise MedvolError(None, f"report format must be html or md, got {fmt!r}")
    run = read_run(run_dir)
    out_dir = Path(out) if out is not None else run.folder.report
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"medvol report: {run.name}"
    blocks: list[Block] = [Heading(title, 1), Paragraph(_provenance(run))]
    if run.unreadable:
        blocks += [Paragraph("Files that could not be read:"), Bullets(tuple(run.unreadable))]
    blocks += model_card(run)
    blocks += training_section(run, out_dir)
    for evaluation, summary in run.evaluations:
        blocks += evaluation_section(evaluation, summary, out_dir)
    if fmt == "html":
        text, path = render_html(blocks, title), out_dir / "report.html"
    else:
        text, path = render_markdown(blocks), out_dir / "report.md"
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    MlflowRun.send_files(run.run_dir, [out_dir], "report")
    return path


def _provenance(run: RunFiles) -> str:
    """The opening sentence: when, by which medvol, from which folder and files."""
    from medvol.version import __version__

    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    evaluations = run.folder.evaluation("*")
    summary = evaluations.summary.relative_to(run.run_dir)
    return (
        f"Generated {created} by medvol {__version__} from the run folder `{run.run_dir}`. "
        f"Every number below is read from that folder: training curves from `{run.folder.metrics.name}`, "
        f"evaluation results from `{summary.as_posix()}` and `{evaluations.cases.name}` "
        "(written by `medvol evaluate`)."
    )
