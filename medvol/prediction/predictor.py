"""One ``medvol predict`` invocation: check, load the run, find the scans, run this shard.

The work itself is one of two jobs (``medvol.prediction.jobs``): label maps
from a segmenter, a table from a classifier.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvol.errors import MedvolError
from medvol.io.atomic import file_sha256, host_tag, owner_gone, write_json
from medvol.logs import Progress, get_logger
from medvol.prediction.claims import Claims, claim_path, sweep
from medvol.prediction.discovery import Failure, Scan, find_scans
from medvol.prediction.jobs import classify_scans, segment_scans
from medvol.prediction.options import ClaimedElsewhere, DoneElsewhere, Options, Outcome
from medvol.prediction.sharding import effective_shard, shard_suffix, take_shard
from medvol.prediction.writers import (
    output_naming,
    output_paths,
    read_rows,
    write_csv,
)

if TYPE_CHECKING:
    from medvol.engine.inference import TrainedModel
    from medvol.volume import Volume

logger = get_logger(__name__)


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
        self.claims = Claims()

    # -- setup

    def check_arguments(self) -> None:
        """Refuse bad folders before loading anything."""
        if not self.run_dir.exists():
            raise MedvolError(self.run_dir, "run folder or model package not found")
        if not self.run_dir.is_dir():
            raise MedvolError(
                self.run_dir, "not a run folder (`medvol train`) or model package (`medvol export`)"
            )
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise MedvolError(self.out_dir, "output path exists and is not a folder")
        if self.in_dir.exists() and self.in_dir.resolve() == self.out_dir.resolve():
            raise MedvolError(self.out_dir, "the output folder must differ from the input folder")
        if self.options.dicom_seg and importlib.util.find_spec("highdicom") is None:
            raise MedvolError(
                None, "--dicom-seg needs the highdicom package: pip install 'medvol[dicom-seg]'"
            )

    def load_model(self) -> TrainedModel:
        """The run's model or a package's (ONNX Runtime runs a package, or ``engine="onnxruntime"``)."""
        from medvol.engine.inference import load_trained, refuse_segmentation_options, tta_flip_axes
        from medvol.export import is_package, load_package, with_onnxruntime
        from medvol.export.runtime import check_device

        options = self.options
        if is_package(self.run_dir):
            if options.engine == "torch":
                raise MedvolError(
                    self.run_dir, "a model package holds the ONNX network only; --engine torch needs the run"
                )
            trained = load_package(self.run_dir, options.torch_threads, options.device)
        elif options.engine == "onnxruntime":
            check_device(options.device)
            trained = load_trained(self.run_dir, options.checkpoint, "cpu")
            trained = with_onnxruntime(trained, options.torch_threads)
        else:
            trained = load_trained(self.run_dir, options.checkpoint, options.device)
        segmentation_only = {
            "--flip-tta": self.options.flip_tta,
            "--largest-component": self.options.largest_component,
            "--probabilities": self.options.probabilities,
            "--dicom-seg": self.options.dicom_seg,
        }
        refuse_segmentation_options(trained, segmentation_only)
        if trained.task.output == "segmentation" and self.options.flip_tta:
            tta_flip_axes(trained)  # refuses a run trained without flips before any scan is read
        return trained

    def settings(self, trained: TrainedModel) -> dict[str, Any]:
        """What makes two runs' outputs interchangeable (checked before resuming)."""
        settings = {
            "run_dir": str(self.run_dir.resolve()),
            "task": trained.task.output,
            "checkpoint": trained.checkpoint,
            "checkpoint_epoch": trained.epoch,
            "checkpoint_sha256": file_sha256(trained.weights)[:16],
            "flip_tta": self.options.flip_tta,
            "largest_component": self.options.largest_component,
        }
        if self.options.volume is not None:  # absent without one, as in earlier output folders
            settings["volume"] = self.options.volume
        if trained.engine != "torch":  # absent for torch, as in output folders of earlier medvol versions
            settings["engine"] = trained.engine
        return settings

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

    def previous_run(self) -> str | None:
        """What the last run into this folder left unsaid: interrupted, or still running elsewhere."""
        try:
            previous = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(previous, dict) or previous.get("status") not in ("running", "interrupted"):
            return None
        started = previous.get("started", "?")
        if previous.get("status") == "interrupted":
            return f"the previous run into this folder (started {started}) was interrupted"
        process = previous.get("process") or {}
        host, pid = process.get("host"), process.get("pid")
        modified = self.manifest_path.stat().st_mtime
        if host == host_tag() and isinstance(pid, int) and not owner_gone(host, pid, modified, 0.0):
            return None  # a live worker on this machine: the scans are shared with it (claims)
        if host != host_tag() and host is not None:
            return (
                f"the previous run into this folder (started {started} on another machine) did not "
                "finish: it was killed, or is still running there (scans are shared with it)"
            )
        return f"the previous run into this folder (started {started}) was killed before it finished"

    def clean_up(self) -> dict[str, Any]:
        """Say how the previous run ended and remove what killed runs left in OUT_DIR."""
        note: dict[str, Any] = {}
        previous = self.previous_run()
        if previous:
            logger.warning("%s; its finished outputs are kept and the rest is done now", previous)
            note["previous_run"] = previous
        swept = sweep(self.out_dir)
        if swept.temporaries:
            logger.warning(
                "removed %d unfinished temporary file(s) left in %s by a killed run (e.g. %s)",
                len(swept.temporaries),
                self.out_dir,
                swept.temporaries[0].relative_to(self.out_dir).as_posix(),
            )
        if swept.claims:
            logger.info("released %d claim(s) of predict processes that ended", len(swept.claims))
        note["removed_temporaries"] = len(swept.temporaries)
        return note

    # -- running

    def run(self) -> Outcome:
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
                "torch_threads": threads or getattr(trained.network, "threads", None),
                "io_threads": self.options.workers,
            },
            "naming": output_naming(trained.task.output, self.suffix),
            "process": {"host": host_tag(), "pid": os.getpid()},
        }
        manifest.update(self.clean_up())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.manifest_path, manifest)
        status = "interrupted"
        with self.claims, _torch_threads(trained.engine == "torch", threads):
            try:
                if trained.task.output == "classification":
                    manifest["classifier_input"] = classify_scans(self, trained, scans, outcome)
                else:
                    segment_scans(self, trained, scans, outcome)
                status = "finished"
            finally:
                self.write_errors(outcome)
                manifest.update(
                    status=status,
                    finished=_now(),
                    counts={
                        "scans": outcome.scans,
                        "predicted": outcome.predicted,
                        "already_done": outcome.skipped,
                        "failed": len(outcome.failures),
                        "ignored_files": outcome.ignored,
                        "left_to_other_processes": len(outcome.elsewhere),
                    },
                    outputs=self.outputs(trained.task.output, scans, outcome),
                )
                write_json(self.manifest_path, manifest)
        outcome.files = {"manifest": self.manifest_path, "errors": self.errors_path}
        if trained.task.output == "classification":
            outcome.files["predictions"] = self.predictions_path
        return outcome

    def outputs(self, output: str, scans: list[Scan], outcome: Outcome) -> dict[str, Any]:
        """Each input of this shard that has its outputs, with them (paths relative to ``OUT_DIR``).

        A segmenter's scan maps to its files; a classifier's to its row of the
        predictions table (by case id). Failed scans and scans left to other
        processes are not listed (``errors.csv`` has the failures).
        """
        left = {f.relative for f in outcome.failures} | set(outcome.elsewhere)
        done = [scan for scan in scans if scan.relative not in left]
        if output == "classification":
            return {scan.relative: f"{self.predictions_path.name}: {scan.case_id}" for scan in done}
        options = self.options
        return {
            scan.relative: [
                path.relative_to(self.out_dir).as_posix()
                for path in output_paths(scan, self.out_dir, options.probabilities, options.dicom_seg)
            ]
            for scan in done
        }

    def write_errors(self, outcome: Outcome) -> None:
        """Rewrite ``errors.csv``: this run's failures, and the rows of scans left to other processes."""
        header = ("case_id", "input", "reason")
        with self.claims.exclusive(claim_path(self.errors_path)):
            kept = [
                row
                for row in read_rows(self.errors_path, header)
                if len(row) == len(header) and row[1] in set(outcome.elsewhere)
            ]
            mine = [[f.case_id, f.relative, f.reason] for f in outcome.failures]
            write_csv(self.errors_path, header, sorted(kept + mine, key=lambda row: (row[1], row[0])))

    def claim(self, scan: Scan) -> Path:
        """Claim ``scan`` for this process (see ``medvol.prediction.claims``) and return the claim.

        Raises:
            ClaimedElsewhere: another live process is predicting it.
        """
        path = claim_path(self.out_dir / scan.name)
        if not self.claims.take(path):
            raise ClaimedElsewhere(scan.relative)
        return path

    def bar(self, total: int) -> Progress:
        """Progress over ``total`` scans: a bar on a terminal, periodic lines elsewhere (``medvol.logs``)."""
        desc = "predict" + (f" {self.shard[0]}/{self.shard[1]}" if self.shard[1] > 1 else "")
        return Progress(total, desc, "scan", logger, self.options.progress)

    def settle(self, outcome: Outcome, scan: Scan, error: BaseException) -> None:
        """Record why ``scan`` gave no output here: done or claimed by another process, or failed."""
        if isinstance(error, DoneElsewhere):
            outcome.skipped += 1
            self.claims.release(claim_path(self.out_dir / scan.name))
        elif isinstance(error, ClaimedElsewhere):
            outcome.elsewhere.append(scan.relative)
        else:  # the claim is kept to the end, so no concurrent worker retries the scan
            self.fail(outcome, scan, error)

    def fail(self, outcome: Outcome, scan: Scan, error: BaseException) -> None:
        """Record that ``scan`` failed, with a one-line reason."""
        if not isinstance(error, MedvolError):
            logger.debug("%s failed", scan.relative, exc_info=error)
        outcome.failures.append(Failure(scan.case_id, scan.relative, self.reason(scan, error)))

    def reason(self, scan: Scan, error: BaseException) -> str:
        """The error as one line, naming the file inside the scan when it is not the scan itself."""
        if isinstance(error, MemoryError):
            return "not enough memory to load or predict this scan (MemoryError)"
        if not isinstance(error, MedvolError):
            return f"{type(error).__name__}: {error}".strip()
        if error.path is None or error.path.resolve() == scan.path.resolve():
            return error.problem
        try:
            where = error.path.resolve().relative_to(self.in_dir.resolve()).as_posix()
        except ValueError:
            where = str(error.path)
        return f"{where}: {error.problem}"

    def load(self, scan: Scan) -> Volume:
        """The scan as ``medvol.load`` gives it (a DICOM series from its already-read headers)."""
        from medvol.io import check_finite, load
        from medvol.io.dicom_load import load_series

        if scan.series is None:
            return load(scan.path, volume=self._volume_for(scan.path))
        volume = load_series(scan.series, volume=self.options.volume)
        volume.meta["source_path"] = str(scan.path)
        check_finite(volume)
        return volume

    def _volume_for(self, path: Path) -> str | None:
        """``--volume`` for a DICOM file (a multi-frame file of several volumes); none for other formats."""
        from medvol.io.dicom_headers import is_dicom_file

        return self.options.volume if self.options.volume is not None and is_dicom_file(path) else None


@contextlib.contextmanager
def _torch_threads(torch_engine: bool, threads: int | None) -> Iterator[None]:
    """torch on ``threads`` CPU threads meanwhile (ONNX Runtime's threads are set on its session)."""
    if not (torch_engine and threads):
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
