"""Batch inference: ``medvol predict RUN_DIR IN_DIR OUT_DIR``.

Every scan below ``IN_DIR`` (each DICOM image series, and every NIfTI, NRRD
and MetaImage file) goes through a trained run; the outputs mirror the
inputs' relative paths under ``OUT_DIR``:

=============================  ================================================
input                          outputs
=============================  ================================================
``IN/a/b.nii.gz`` (any format)  ``OUT/a/b.seg.nii.gz`` label map (uint8),
                               ``OUT/a/b.prob.nii.gz`` probabilities
                               (``--probabilities``, float32, 4D ``X×Y×Z×K``)
DICOM series in ``IN/a/``      ``OUT/a/dicom-<hash>.seg.nii.gz`` (and
                               ``.prob.nii.gz``), ``OUT/a/dicom-<hash>.seg.dcm``
                               (``--dicom-seg``, DICOM SEG via highdicom)
classifier, any scan           a row of ``OUT/predictions.csv``
=============================  ================================================

A classifier's input depends on what it was trained on. One trained on scan
files (a manifest with a ``class`` column) sees each scan exactly as in
training: preprocessed and normalised with the run's fitted normaliser, then
centre-cropped/padded to ``data.patch_size``
(``medvol.engine.inference.classify_scan``). One trained on a MedMNIST
``.npz`` saw ``uint8 / 255`` arrays; a scan is reoriented to RAS, min-max
scaled to [0, 1] and resized to the training shape (``classifier_input``),
which matches MedMNIST's range and shape but not its crops or windowing.

Label maps and probabilities lie on the scan's own grid: the shape and affine
of ``medvol.load(input)``. A DICOM series is named by the id ``medvol index``
gives it (``dicom-`` + a hash of its series UID and folder), never by anything
from its headers. ``errors.csv`` lists every input that failed and why;
``predict.json`` records the run, checkpoint, options and counts.

Resuming: each output file is written atomically, a scan whose outputs all
exist is skipped (``--overwrite`` redoes it), and classifier rows already in
``predictions.csv`` are kept, so a killed run started again does only the rest.

Sharding: ``--shard I/N`` takes scans ``I, I+N, I+2N, ...`` of the sorted list;
under ``torchrun`` (``WORLD_SIZE`` > 1) every rank takes its own share of that
in the same way, with no process group. Per-shard files are named
``errors.shard-I-of-N.csv``, ``predictions.shard-I-of-N.csv`` and
``predict.shard-I-of-N.json``, so no two processes write the same file.

Scans are loaded and outputs written by a small thread pool while the model
runs in the main thread (torch, SimpleITK, zlib and numpy release the GIL).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medvol.errors import MedvolError
from medvol.io.atomic import atomic_path, file_sha256, full_suffix, write_json

if TYPE_CHECKING:
    from medvol.engine.inference import TrainedModel
    from medvol.io.dicom import DicomSeries
    from medvol.volume import Volume

logger = logging.getLogger(__name__)

#: File suffixes read as one scan each (the rest are checked for DICOM).
SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Names that promise a DICOM file: an error, not an ignored file, when they are not one.
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
LABEL_SUFFIX = ".seg.nii.gz"
PROBABILITY_SUFFIX = ".prob.nii.gz"
DICOM_SEG_SUFFIX = ".seg.dcm"
DICOM_SEG_SERIES_NUMBER = 9901
CLASSIFIER_BATCH = 32
CSV_FLUSH_SECONDS = 10.0


@dataclass(frozen=True)
class Scan:
    """One input scan.

    Attributes:
        case_id: the file's relative path without its suffix (``a/b``), or
            ``dicom-<hash>`` for a DICOM series (as ``medvol index`` names it).
        relative: the input's path relative to ``IN_DIR`` (POSIX separators);
            a DICOM series' folder.
        name: the outputs' path relative to ``OUT_DIR``, without suffix.
        path: the file, or the folder of the series' first file.
        series: the DICOM series (headers only), ``None`` for files.
    """

    case_id: str
    relative: str
    name: str
    path: Path
    series: DicomSeries | None = None

    @property
    def is_dicom(self) -> bool:
        return self.series is not None

    @property
    def single_frame_series(self) -> bool:
        """A stack of single-frame slices (what DICOM SEG output supports)."""
        return self.series is not None and all(h.frames == 1 and not h.is_mosaic for h in self.series.headers)


@dataclass(frozen=True)
class Failure:
    """An input that produced no (or not every) output, and why."""

    case_id: str
    relative: str
    reason: str


@dataclass
class Found:
    """What ``find_scans`` saw below ``IN_DIR``."""

    scans: list[Scan]
    failures: list[Failure]
    ignored: int  # files that are neither scans nor DICOM images (text, DICOMDIR, SR, ...)


@dataclass
class Outcome:
    """What one ``predict`` call did (this shard's share)."""

    scans: int
    predicted: int
    skipped: int
    failures: list[Failure] = field(default_factory=list)
    ignored: int = 0
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


# ----------------------------------------------------------------------- discovery


def dicom_case_id(series_key: str, folder: Path, root: Path) -> str:
    """``dicom-<hash>``: the id ``medvol.data.cases.discover_dicom`` gives a series.

    The hash covers the series key (SeriesInstanceUID, ``#2``... when split)
    and the folder relative to ``root``; it carries no patient data.
    """
    identity = f"{series_key}|{folder.relative_to(root)}".encode()
    return "dicom-" + hashlib.sha256(identity).hexdigest()[:12]


def walk_files(root: Path, exclude: Path | None = None) -> list[Path]:
    """Every regular file below ``root``, sorted; hidden names and ``exclude`` skipped."""
    excluded = None if exclude is None else os.path.realpath(exclude)
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and os.path.realpath(os.path.join(folder, d)) != excluded
        )
        files.extend(Path(folder) / n for n in sorted(names) if not n.startswith("."))
    return [path for path in files if path.is_file()]


def find_scans(in_dir: Path, exclude: Path | None = None) -> Found:
    """Find every scan below ``in_dir`` from names and DICOM headers (no pixels read).

    Files named ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` are
    scans; every other file is checked for a DICOM header and DICOM images are
    grouped into series (as ``medvol.io.dicom.scan_folder`` does, over the whole
    tree). Corrupt or truncated DICOM files, and files named ``.dcm`` that are
    not DICOM, are failures; a series in a folder holding a corrupt DICOM file
    is a failure too (the file may be one of its slices). Other files (text,
    DICOMDIR, structured reports, ``.raw`` data of ``.mhd`` headers) are ignored.

    Raises:
        MedvolError: ``in_dir`` is missing, not a folder, or holds no files.
    """
    from medvol.io.dicom import SkippedFile, SliceHeader, group_series, scan_headers

    if not in_dir.exists():
        raise MedvolError(in_dir, "input folder not found")
    if not in_dir.is_dir():
        raise MedvolError(in_dir, "not a folder: give the folder that holds the scans")
    files = walk_files(in_dir, exclude)
    if not files:
        raise MedvolError(in_dir, "empty input folder: no files to predict on")
    scans: list[Scan] = []
    failures: list[Failure] = []
    candidates: list[Path] = []
    ignored = 0
    for path in files:
        suffix = full_suffix(path)
        if suffix in SCAN_SUFFIXES:
            relative = path.relative_to(in_dir).as_posix()
            stem = relative[: len(relative) - len(suffix)]
            scans.append(Scan(stem, relative, stem, path))
        elif suffix not in DICOM_SUFFIXES and path.stat().st_size == 0:
            ignored += 1
        else:
            candidates.append(path)
    results = scan_headers(candidates, collect_errors=True)
    corrupt: dict[Path, str] = {}
    for item in results:
        if not isinstance(item, SkippedFile):
            continue
        path = Path(item.path)
        relative = path.relative_to(in_dir).as_posix()
        if item.corrupt:
            failures.append(Failure("", relative, item.reason))
            corrupt.setdefault(path.parent, path.name)
        elif full_suffix(path) in DICOM_SUFFIXES and "no DICM preamble" in item.reason:
            failures.append(Failure("", relative, f"named like a DICOM file but {item.reason}"))
        else:
            ignored += 1
    for series in group_series(r for r in results if isinstance(r, SliceHeader)):
        folder = Path(series.first.path).parent
        case_id = dicom_case_id(series.key, folder, in_dir)
        relative = folder.relative_to(in_dir).as_posix()
        name = case_id if relative == "." else f"{relative}/{case_id}"
        if folder in corrupt:
            reason = (
                f"not predicted: the unreadable DICOM file {corrupt[folder]} in this folder may be "
                "one of this series' slices; repair or remove it"
            )
            failures.append(Failure(case_id, relative, reason))
        else:
            scans.append(Scan(case_id, relative, name, folder, series))
    return Found(*_unique_names(scans, failures), ignored)


def _unique_names(scans: list[Scan], failures: list[Failure]) -> tuple[list[Scan], list[Failure]]:
    """Scans sorted by output name; a second input mapping to a taken name is a failure."""
    owners: dict[str, Scan] = {}
    for scan in sorted(scans, key=lambda s: (s.name, s.relative)):
        if scan.name in owners:
            other = owners[scan.name].relative
            failures.append(
                Failure(scan.case_id, scan.relative, f"its outputs would overwrite those of {other}")
            )
        else:
            owners[scan.name] = scan
    return list(owners.values()), failures


# ------------------------------------------------------------------------ sharding


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)`` with ``0 <= I < N``; ``None`` → ``(0, 1)``.

    Raises:
        MedvolError: anything else, quoting the string.
    """
    if text is None:
        return 0, 1
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None:
        raise MedvolError(None, f"--shard {text!r}: expected I/N, e.g. 0/4 for the first of 4 shards")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise MedvolError(None, f"--shard {text!r}: need N >= 1 and 0 <= I < N (I is 0-based)")
    return index, count


def effective_shard(shard: tuple[int, int], environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Combine ``--shard I/N`` with a torchrun rank: ``(I + N·RANK, N·WORLD_SIZE)``.

    ``items[I::N][RANK::WORLD_SIZE]`` equals ``items[I + N·RANK :: N·WORLD_SIZE]``,
    so the ranks of every shard partition that shard exactly.
    """
    environ = os.environ if environ is None else environ
    try:
        world = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
    except ValueError as error:
        raise MedvolError(
            None, f"RANK/WORLD_SIZE environment variables are not integers ({error})"
        ) from error
    if world < 1 or not 0 <= rank < world:
        raise MedvolError(None, f"RANK={rank} is not a rank of WORLD_SIZE={world}")
    index, count = shard
    return index + count * rank, count * world


def take_shard(items: Sequence[Any], index: int, count: int) -> list[Any]:
    """Every ``count``-th item starting at ``index`` (a deterministic partition)."""
    return list(items[index::count])


def shard_suffix(index: int, count: int) -> str:
    """``""`` for one shard, else ``".shard-I-of-N"`` (for per-shard file names)."""
    return "" if count == 1 else f".shard-{index}-of-{count}"


# -------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Options:
    """What to compute and write (the CLI flags)."""

    checkpoint: Literal["best", "last"] = "best"
    flip_tta: bool = False
    largest_component: bool = False
    probabilities: bool = False
    dicom_seg: bool = False
    overwrite: bool = False
    device: str = "auto"
    shard: tuple[int, int] = (0, 1)
    workers: int = 2
    progress: bool | None = None  # tqdm's rule: None shows it when stderr is a terminal
    torch_threads: int | None = None  # None: torch's own setting (OMP_NUM_THREADS, else every core)


def output_paths(scan: Scan, out_dir: Path, options: Options) -> list[Path]:
    """The files a segmentation run writes for ``scan``; the scan is done when all exist."""
    base = out_dir / scan.name
    paths = [base.with_name(base.name + LABEL_SUFFIX)]
    if options.probabilities:
        paths.append(base.with_name(base.name + PROBABILITY_SUFFIX))
    if options.dicom_seg and scan.single_frame_series:
        paths.append(base.with_name(base.name + DICOM_SEG_SUFFIX))
    return paths


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a CSV atomically."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------- pipeline


def run_pipeline(
    scans: Sequence[Scan],
    prepare: Callable[[Scan], Any],
    compute: Callable[[list[Any]], list[Any]],
    finish: Callable[[Scan, Any], None],
    *,
    batch_size: int = 1,
    workers: int = 2,
    on_failure: Callable[[Scan, BaseException], None],
    on_done: Callable[[Scan], None],
) -> None:
    """Run ``prepare`` (load) and ``finish`` (save) in threads around ``compute``.

    ``prepare(scan)`` runs in a pool of ``workers`` threads, a few scans ahead;
    ``compute`` gets batches of prepared items in this thread (the model);
    ``finish(scan, result)`` is queued to the same pool. An exception in any
    step of one scan goes to ``on_failure`` and the batch goes on; a failing
    batch is retried one scan at a time to find the culprit. ``on_done`` and
    ``on_failure`` are called from this thread only. About
    ``max(workers, batch_size) + batch_size + workers`` scans are held in
    memory at once (loaded ahead, in the model, being written).
    """
    prefetch = max(workers, batch_size) + batch_size
    pending = iter(scans)
    loads: deque[tuple[Scan, Future[Any]]] = deque()
    saves: deque[tuple[Scan, Future[None]]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medvol-predict")

    def fill() -> None:
        while len(loads) < prefetch:
            scan = next(pending, None)
            if scan is None:
                return
            loads.append((scan, pool.submit(prepare, scan)))

    def drain(limit: int) -> None:
        while len(saves) > limit:
            scan, future = saves.popleft()
            try:
                future.result()
            except Exception as error:
                on_failure(scan, error)
            else:
                on_done(scan)

    def run_batch(batch: list[tuple[Scan, Any]]) -> None:
        try:
            results = compute([item for _, item in batch])
        except Exception as error:
            if len(batch) == 1:
                on_failure(batch[0][0], error)
                return
            for one in batch:
                run_batch([one])
            return
        for (scan, _), result in zip(batch, results, strict=True):
            saves.append((scan, pool.submit(finish, scan, result)))

    try:
        fill()
        while loads:
            batch: list[tuple[Scan, Any]] = []
            while loads and len(batch) < batch_size:
                scan, future = loads.popleft()
                try:
                    batch.append((scan, future.result()))
                except Exception as error:
                    on_failure(scan, error)
                fill()
                if batch and loads and not loads[0][1].done():
                    break  # compute what is ready rather than wait for a full batch
            if batch:
                run_batch(batch)
            drain(workers)
        drain(0)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# ---------------------------------------------------------------------- the command


class Predictor:
    """One ``medvol predict`` invocation over this process's shard."""

    def __init__(self, run_dir: Path, in_dir: Path, out_dir: Path, options: Options) -> None:
        self.run_dir = run_dir
        self.in_dir = in_dir
        self.out_dir = out_dir
        self.options = options
        self.shard = effective_shard(options.shard)
        self.suffix = shard_suffix(*self.shard)
        self.manifest_path = out_dir / f"predict{self.suffix}.json"
        self.errors_path = out_dir / f"errors{self.suffix}.csv"
        self.predictions_path = out_dir / f"predictions{self.suffix}.csv"

    # -- setup

    def check_arguments(self) -> None:
        """Refuse bad folders before loading anything."""
        if not self.run_dir.exists():
            raise MedvolError(self.run_dir, "run folder not found")
        if not self.run_dir.is_dir():
            raise MedvolError(self.run_dir, "not a run folder (written by `medvol train`)")
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise MedvolError(self.out_dir, "output path exists and is not a folder")
        if self.in_dir.exists() and self.in_dir.resolve() == self.out_dir.resolve():
            raise MedvolError(self.out_dir, "the output folder must differ from the input folder")
        if self.options.dicom_seg and importlib.util.find_spec("highdicom") is None:
            raise MedvolError(
                None, "--dicom-seg needs the highdicom package: pip install 'medvol[dicom-seg]'"
            )

    def load_model(self) -> TrainedModel:
        from medvol.engine.distributed import choose_device
        from medvol.engine.inference import load_trained

        local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        try:
            device = str(choose_device(self.options.device, local_rank))
        except RuntimeError as error:
            raise MedvolError(None, f"--device {self.options.device}: {error}") from error
        trained = load_trained(self.run_dir, self.options.checkpoint, device)
        segmentation_only = {
            "--tta": self.options.flip_tta,
            "--largest-component": self.options.largest_component,
            "--probabilities": self.options.probabilities,
            "--dicom-seg": self.options.dicom_seg,
        }
        if trained.task == "classification":
            used = [flag for flag, on in segmentation_only.items() if on]
            if used:
                raise MedvolError(
                    self.run_dir, f"{', '.join(used)} apply to segmentation runs; this is a classifier"
                )
        return trained

    def settings(self, trained: TrainedModel) -> dict[str, Any]:
        """What makes two runs' outputs interchangeable (checked before resuming)."""
        return {
            "run_dir": str(self.run_dir.resolve()),
            "task": trained.task,
            "checkpoint": trained.checkpoint,
            "checkpoint_epoch": trained.epoch,
            "checkpoint_sha256": file_sha256(self.run_dir / "checkpoints" / f"{trained.checkpoint}.pt")[:16],
            "flip_tta": self.options.flip_tta,
            "largest_component": self.options.largest_component,
        }

    def check_previous(self, settings: dict[str, Any]) -> None:
        """Refuse to mix outputs of another model or other settings into OUT_DIR."""
        if self.options.overwrite or not self.out_dir.is_dir():
            return
        for path in sorted(self.out_dir.glob("predict*.json")):
            try:
                previous = json.loads(path.read_text()).get("settings", {})
            except (OSError, ValueError, AttributeError):
                continue
            changed = [key for key, value in settings.items() if previous.get(key) != value]
            if changed:
                detail = ", ".join(f"{key} {previous.get(key)!r} → {settings[key]!r}" for key in changed)
                raise MedvolError(
                    path,
                    f"outputs here came from other settings ({detail}); pass --overwrite to redo "
                    "them all, or choose another output folder",
                )

    # -- running

    def run(self) -> Outcome:
        import torch

        from medvol.version import __version__

        self.check_arguments()
        trained = self.load_model()
        settings = self.settings(trained)
        self.check_previous(settings)
        exclude = self.out_dir if _is_inside(self.out_dir, self.in_dir) else None
        found = find_scans(self.in_dir, exclude)
        if not found.scans and not found.failures:
            raise MedvolError(
                self.in_dir,
                f"no scans found: none of its {found.ignored} file(s) is a DICOM image, "
                "NIfTI, NRRD or MetaImage file",
            )
        entries: list[Scan | Failure] = sorted(
            [*found.scans, *found.failures], key=lambda e: (e.relative, e.case_id)
        )
        mine = take_shard(entries, *self.shard)
        scans = [e for e in mine if isinstance(e, Scan)]
        outcome = Outcome(
            scans=len(mine),
            predicted=0,
            skipped=0,
            failures=[e for e in mine if isinstance(e, Failure)],
            ignored=found.ignored,
        )
        threads = self.options.torch_threads
        manifest: dict[str, Any] = {
            "medvol_version": __version__,
            "status": "running",
            "started": _now(),
            "settings": settings,
            "in_dir": str(self.in_dir.resolve()),
            "shard": {"index": self.shard[0], "count": self.shard[1]},
            "options": {
                "probabilities": self.options.probabilities,
                "dicom_seg": self.options.dicom_seg,
                "overwrite": self.options.overwrite,
                "device": str(trained.device),
                "torch_threads": threads or torch.get_num_threads(),
                "io_threads": self.options.workers,
            },
            "naming": _naming(trained.task, self.suffix),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.manifest_path, manifest)
        status = "interrupted"
        previous_threads = torch.get_num_threads()
        try:
            if threads:
                torch.set_num_threads(threads)
            if trained.task == "classification":
                manifest["classifier_input"] = self._classify(trained, scans, outcome)
            else:
                self._segment(trained, scans, outcome)
            status = "finished"
        finally:
            torch.set_num_threads(previous_threads)
            failures = sorted(outcome.failures, key=lambda f: (f.relative, f.case_id))
            write_csv(
                self.errors_path,
                ("case_id", "input", "reason"),
                [(f.case_id, f.relative, f.reason) for f in failures],
            )
            manifest.update(
                status=status,
                finished=_now(),
                counts={
                    "scans": outcome.scans,
                    "predicted": outcome.predicted,
                    "already_done": outcome.skipped,
                    "failed": len(outcome.failures),
                    "ignored_files": outcome.ignored,
                },
            )
            write_json(self.manifest_path, manifest)
        outcome.files = {"manifest": self.manifest_path, "errors": self.errors_path}
        if trained.task == "classification":
            outcome.files["predictions"] = self.predictions_path
        return outcome

    def _bar(self, total: int) -> Any:
        from tqdm import tqdm

        return tqdm(
            total=total,
            desc="predict" + (f" {self.shard[0]}/{self.shard[1]}" if self.shard[1] > 1 else ""),
            unit="scan",
            file=sys.stderr,
            disable=None if self.options.progress is None else not self.options.progress,
            dynamic_ncols=True,
        )

    def _fail(self, outcome: Outcome, scan: Scan, error: BaseException) -> None:
        if not isinstance(error, MedvolError):
            logger.debug("%s failed", scan.relative, exc_info=error)
        outcome.failures.append(Failure(scan.case_id, scan.relative, self._reason(scan, error)))

    def _reason(self, scan: Scan, error: BaseException) -> str:
        """The error as one line, naming the file inside the scan when it is not the scan itself."""
        if not isinstance(error, MedvolError):
            return f"{type(error).__name__}: {error}".strip()
        if error.path is None or error.path.resolve() == scan.path.resolve():
            return error.problem
        try:
            where = error.path.resolve().relative_to(self.in_dir.resolve()).as_posix()
        except ValueError:
            where = str(error.path)
        return f"{where}: {error.problem}"

    def _load(self, scan: Scan) -> Volume:
        from medvol.io import check_finite, load
        from medvol.io.dicom import load_series

        if scan.series is None:
            return load(scan.path)
        volume = load_series(scan.series)
        volume.meta["source_path"] = str(scan.path)
        check_finite(volume)
        return volume

    def _segment(self, trained: TrainedModel, scans: list[Scan], outcome: Outcome) -> None:
        from medvol.engine.inference import segment
        from medvol.io import save
        from medvol.volume import Volume

        todo = []
        for scan in scans:
            outputs = output_paths(scan, self.out_dir, self.options)
            if not self.options.overwrite and all(p.is_file() for p in outputs):
                outcome.skipped += 1
            else:
                todo.append(scan)
        no_seg = [s for s in todo if self.options.dicom_seg and s.is_dicom and not s.single_frame_series]
        if no_seg:
            print(
                f"note: {len(no_seg)} DICOM input(s) are multi-frame or mosaic files; DICOM SEG is "
                "written for single-frame series only (their NIfTI label maps are written)",
                file=sys.stderr,
            )

        def compute(volumes: list[Any]) -> list[Any]:
            return [
                segment(
                    trained,
                    volume,
                    flip_tta=self.options.flip_tta,
                    largest_component=self.options.largest_component,
                    keep_probabilities=self.options.probabilities,
                )
                for volume in volumes
            ]

        def finish(scan: Scan, result: Any) -> None:
            label_path, *others = output_paths(scan, self.out_dir, self.options)
            meta = {"source_path": scan.relative}
            if self.options.probabilities:
                probabilities = result.probabilities
                save(Volume(probabilities.array, probabilities.affine, meta), others.pop(0))
            if others:  # DICOM SEG
                write_dicom_seg(scan, result.label.array[0], trained, others.pop(0))
            save(Volume(result.label.array, result.label.affine, meta), label_path)  # last: marks it done

        with self._bar(len(todo)) as bar:

            def done(scan: Scan) -> None:
                outcome.predicted += 1
                bar.update()

            def failed(scan: Scan, error: BaseException) -> None:
                self._fail(outcome, scan, error)
                bar.update()
                bar.set_postfix(failed=len(outcome.failures))

            run_pipeline(
                todo,
                self._load,
                compute,
                finish,
                workers=self.options.workers,
                on_failure=failed,
                on_done=done,
            )

    def _classify(self, trained: TrainedModel, scans: list[Scan], outcome: Outcome) -> dict[str, Any]:
        from medvol.engine.inference import classify, prepare_scan

        channels = int(trained.config.model.options.get("in_channels", 1))
        if trained.medmnist:
            shape = classifier_input_shape(trained.run_dir)
            how = (
                "MedMNIST-trained: each scan reoriented to RAS, min-max scaled to [0, 1], resized to "
                "the training shape (trilinear, anti-aliased)"
            )
        else:
            assert trained.config.data.patch_size is not None  # required to train on scan files
            shape = trained.config.data.patch_size
            how = (
                "trained on scan files: each scan preprocessed and normalised as in training, "
                "centre-cropped/padded to data.patch_size (medvol.engine.inference.classify_scan)"
            )
        classes = trained.num_classes
        header = ["case_id", "input", *[f"probability_{k}" for k in range(classes)], "predicted_class"]
        rows = {} if self.options.overwrite else read_predictions(self.predictions_path, header)
        rows_lock = threading.Lock()  # finish() adds rows in pool threads, flush() reads them here
        todo = [scan for scan in scans if scan.case_id not in rows]
        outcome.skipped += len(scans) - len(todo)
        last_flush = time.monotonic()

        def flush() -> None:
            with rows_lock:
                table = [rows[key] for key in sorted(rows)]
            write_csv(self.predictions_path, header, table)

        def prepare(scan: Scan) -> np.ndarray:
            volume = self._load(scan)
            if not trained.medmnist:
                return prepare_scan(trained, volume)
            if volume.num_channels != channels:
                raise MedvolError(
                    scan.path, f"the model takes {channels} channel(s), the scan has {volume.num_channels}"
                )
            return classifier_input(volume, shape)

        def compute(images: list[np.ndarray]) -> list[np.ndarray]:
            return list(classify(trained, np.stack(images)))

        def finish(scan: Scan, probabilities: np.ndarray) -> None:
            values = [f"{float(p):.6f}" for p in probabilities]
            with rows_lock:
                rows[scan.case_id] = [scan.case_id, scan.relative, *values, int(np.argmax(probabilities))]

        with self._bar(len(todo)) as bar:

            def done(scan: Scan) -> None:
                nonlocal last_flush
                outcome.predicted += 1
                bar.update()
                if time.monotonic() - last_flush > CSV_FLUSH_SECONDS:
                    flush()
                    last_flush = time.monotonic()

            def failed(scan: Scan, error: BaseException) -> None:
                self._fail(outcome, scan, error)
                bar.update()

            try:
                run_pipeline(
                    todo,
                    prepare,
                    compute,
                    finish,
                    batch_size=CLASSIFIER_BATCH,
                    workers=self.options.workers,
                    on_failure=failed,
                    on_done=done,
                )
            finally:
                flush()
        return {"shape": list(shape), "channels": channels, "how": how}


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _naming(task: str, suffix: str) -> dict[str, str]:
    if task == "classification":
        return {"predictions": f"predictions{suffix}.csv", "errors": f"errors{suffix}.csv"}
    return {
        "label": f"<input path without suffix>{LABEL_SUFFIX}",
        "probabilities": f"<input path without suffix>{PROBABILITY_SUFFIX}",
        "dicom_series": f"<series folder>/dicom-<hash>{LABEL_SUFFIX} (and {DICOM_SEG_SUFFIX})",
        "errors": f"errors{suffix}.csv",
    }


# ----------------------------------------------------------------- classification


def classifier_input_shape(run_dir: Path) -> tuple[int, int, int]:
    """The training input shape ``(X, Y, Z)`` from the run's ``fingerprint.json``."""
    path = run_dir / "fingerprint.json"
    try:
        shape = json.loads(path.read_text())["shape"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MedvolError(path, f"cannot read the classifier's input 'shape' ({error})") from error
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise MedvolError(path, f"'shape' must be three positive integers, got {shape!r}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def classifier_input(volume: Volume, shape: tuple[int, int, int]) -> np.ndarray:
    """A scan as a MedMNIST-style classifier input ``(C, *shape)`` float32 in [0, 1].

    MedMNIST classifiers train on ``uint8 / 255`` arrays of a fixed small
    shape. A scan is reoriented to RAS (exact), min-max scaled per channel to
    [0, 1] and resized to ``shape`` (trilinear, anti-aliased). This matches the
    training input's range and shape only: MedMNIST's own crops, windowing
    and axis order are not reproduced, so predictions on arbitrary scans are
    only as good as that resemblance.
    """
    import torch
    from monai.transforms import Resize

    from medvol.transforms.preprocess import reorient

    oriented, _ = reorient(volume, "RAS")
    array = oriented.array.astype(np.float32)
    low = array.min(axis=(1, 2, 3), keepdims=True)
    span = array.max(axis=(1, 2, 3), keepdims=True) - low
    scaled = np.where(span > 0, (array - low) / np.where(span > 0, span, 1), 0).astype(np.float32)
    resized = Resize(shape, mode="trilinear", anti_aliasing=True)(torch.from_numpy(scaled))
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def read_predictions(path: Path, header: Sequence[str]) -> dict[str, list[Any]]:
    """Rows of an earlier ``predictions.csv`` by case id (empty when there is none).

    Raises:
        MedvolError: the file exists with other columns (another model).
    """
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        found = next(reader, None)
        if found != list(header):
            raise MedvolError(
                path, f"has columns {found}, expected {list(header)}; pass --overwrite to redo it"
            )
        return {row[0]: row for row in reader if len(row) == len(header)}


# ----------------------------------------------------------------------- DICOM SEG


def write_dicom_seg(scan: Scan, label: np.ndarray, trained: TrainedModel, path: Path) -> None:
    """Write a label map ``(X, Y, Z)`` on a DICOM series' grid as a binary DICOM SEG.

    Frame ``k`` of the label (index ``z``) belongs to the ``k``-th slice along
    the slice normal, the order ``medvol.load`` stacks them in; rows and
    columns follow DICOM (``label[:, :, k].T``). One segment per foreground
    class, labelled ``class N`` with the generic code *Tissue*. The SEG copies
    the patient and study modules of its source images, as DICOM requires, so
    it holds the same identifiers as they do (its file name does not).
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from medvol.io.dicom import stack_geometry
    from medvol.version import __version__

    if scan.series is None:
        raise MedvolError(scan.path, "DICOM SEG is written for DICOM inputs only")
    ordered, _, _ = stack_geometry(scan.series.headers)
    sources = []
    for header in ordered:
        dataset = pydicom.dcmread(header.path, stop_before_pixels=True)
        # Some anonymised exports blank the SOP UIDs in the dataset; the file meta keeps them.
        for keyword, meta_keyword in (
            ("SOPClassUID", "MediaStorageSOPClassUID"),
            ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
        ):
            if not dataset.get(keyword):
                setattr(dataset, keyword, dataset.file_meta.get(meta_keyword))
        sources.append(dataset)
    mask = np.ascontiguousarray(np.asarray(label, dtype=np.uint8).transpose(2, 1, 0))
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medvol", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    classes = range(1, trained.num_classes)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=f"class {value}",
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for value in classes
    ]
    # BINARY SEG takes one binary plane per segment: (frames, rows, columns, segments).
    planes = np.stack([mask == value for value in classes], axis=-1)
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=planes,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=DICOM_SEG_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medvol",
            manufacturer_model_name=str(trained.config.model.name),
            software_versions=__version__,
            device_serial_number="none",
            series_description="medvol segmentation",
            omit_empty_frames=bool(planes.any()),
        )
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        raise MedvolError(scan.path, f"cannot write DICOM SEG ({error})") from error
    with atomic_path(path) as temporary:
        seg.save_as(temporary)


# ----------------------------------------------------------------------------- CLI


def predict(
    run_dir: str | Path, in_dir: str | Path, out_dir: str | Path, options: Options | None = None
) -> Outcome:
    """Predict every scan below ``in_dir`` with the run in ``run_dir``; see the module docstring."""
    return Predictor(Path(run_dir), Path(in_dir), Path(out_dir), options or Options()).run()


def summary(outcome: Outcome, out_dir: Path) -> str:
    """The lines ``medvol predict`` prints when it is done."""
    lines = [
        f"{outcome.scans} input(s): {outcome.predicted} predicted, {outcome.skipped} already done, "
        f"{len(outcome.failures)} failed; {outcome.ignored} non-image file(s) ignored",
        f"outputs in {out_dir}",
    ]
    for failure in outcome.failures[:10]:
        lines.append(f"  failed {failure.relative}: {failure.reason}")
    if len(outcome.failures) > 10:
        lines.append(f"  ... and {len(outcome.failures) - 10} more")
    if outcome.failures:
        lines.append(f"see {outcome.files['errors']}")
    return "\n".join(lines)


def run_cli(args: argparse.Namespace) -> int:
    """``medvol predict``: exit code 0 when every scan was predicted, 1 when any failed."""
    options = Options(
        checkpoint=args.checkpoint,
        flip_tta=args.tta,
        largest_component=args.largest_component,
        probabilities=args.probabilities,
        dicom_seg=args.dicom_seg,
        overwrite=args.overwrite,
        device=args.device,
        shard=parse_shard(args.shard),
    )
    outcome = predict(args.run_dir, args.in_dir, args.out_dir, options)
    print(summary(outcome, args.out_dir))
    return outcome.exit_code
