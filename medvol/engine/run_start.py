"""Starting or resuming a run folder: what may be reused, what must be refused.

``prepare_run_folder`` decides, before ``medvol train`` writes anything,
whether the folder is new, a start that failed before its first checkpoint
(cleaned and reused), a run to resume, or someone else's folder (refused);
``check_resumed_config`` refuses to resume with other settings than the run's
own ``config.yaml``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medvol.engine.run_folder import RunFolder
from medvol.errors import MedvolError
from medvol.logs import get_logger

if TYPE_CHECKING:
    from medvol.config import ExperimentConfig

logger = get_logger(__name__)


def prepare_run_folder(run: RunFolder, resume: bool) -> None:
    """Check the run folder before anything is written; start afresh where nothing is worth keeping.

    A run folder with ``checkpoints/`` (made first, before anything else is
    written) but no checkpoint in it is a start that failed before its first
    epoch ended: the files written before that (config, split, normaliser...)
    are rewritten by the new start, so they are removed and the folder is
    reused (its preprocessing cache is kept). Files medvol does not write
    there are never removed, and a folder that medvol did not start (no
    ``checkpoints/``, e.g. one holding the user's own ``config.yaml``) is
    never touched: the user is told what to do.

    Raises:
        MedvolError: ``resume`` without a checkpoint; a run with a checkpoint
            without ``resume``; a folder without one that holds other files.
    """
    last = run.checkpoint("last")
    started = run.path.is_dir() and any(run.path.iterdir())
    failed_start = started and run.checkpoints.is_dir()
    has_checkpoint = last.is_file() or run.checkpoint("best").is_file()
    if resume and not last.is_file():
        why = "the run stopped before its first checkpoint" if failed_start else "the run has not started"
        raise MedvolError(
            run.path,
            f"nothing to resume: no {last.relative_to(run.path)} ({why}); "
            "run the same command without --resume to start it afresh",
        )
    if not resume and has_checkpoint:
        raise MedvolError(
            run.path, "run folder exists; pass --resume to continue it or choose another tracking.name"
        )
    if not resume and started and not failed_start:
        raise MedvolError(
            run.path,
            "the run folder exists and was not made by `medvol train` (no checkpoints/ in it); "
            "choose another tracking.name or tracking.output_dir",
        )
    if not resume and failed_start:
        clear_failed_start(run)
    run.checkpoints.mkdir(parents=True, exist_ok=True)


#: Settings a resumed run may change: where the data and cache are, the machine, the logging.
#: Anything else would make the continuation another experiment than its config.yaml says.
RESUMABLE_CHANGES = (
    "data.root",
    "data.split.val_root",
    "data.cache_dir",
    "data.num_workers",
    "data.prefetch",
    "train.device",
    "train.amp",
    "train.channels_last",
    "tracking.",
)


def check_resumed_config(run: RunFolder, config: ExperimentConfig) -> None:
    """Refuse to resume with settings other than the run's ``config.yaml`` (``RESUMABLE_CHANGES`` aside).

    Raises:
        MedvolError: naming each differing key with the run's value and the new one.
    """
    saved = flatten(run.read_config().model_dump(mode="json"))
    given = flatten(config.model_dump(mode="json"))
    changed = [
        f"{key}: {saved.get(key)!r} → {given.get(key)!r}"
        for key in sorted(saved.keys() | given.keys())
        if saved.get(key) != given.get(key) and not key.startswith(RESUMABLE_CHANGES)
    ]
    if changed:
        raise MedvolError(
            run.config,
            "--resume continues the run as this file configures it, but the config given differs: "
            + "; ".join(changed)
            + ". Resume with the run's own settings, or start a new run with another tracking.name",
        )


def clear_failed_start(run: RunFolder) -> None:
    """Remove what a start that wrote no checkpoint left in ``run`` (see ``prepare_run_folder``)."""
    import shutil

    written = [
        run.config,
        run.split,
        run.fingerprint,
        run.input_spec,
        run.normalizer,
        run.environment,
        run.metrics,
        run.tensorboard,
        run.mlflow_db,
        run.mlflow_run,
        run.checkpoints,
    ]
    others = sorted(p.name for p in run.path.iterdir() if p not in (*written, run.cache))
    if others:
        raise MedvolError(
            run.path,
            f"run folder exists without a checkpoint but holds files medvol did not write there "
            f"({', '.join(others)}); move them away or choose another tracking.name",
        )
    logger.info("note: %s has no checkpoint (an earlier start failed); starting the run afresh", run.path)
    for path in written:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (MLflow params are flat)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
