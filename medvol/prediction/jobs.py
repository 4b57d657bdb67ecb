"""The two jobs of ``medvol predict``: label maps from a segmenter, a table from a classifier.

Both run this shard's scans through ``run_pipeline`` (loading and writing in
threads around the model), claim each scan so that concurrent processes share
the output folder, and prepare each input with the run's task
(``medvol.engine.inference.prepare_input``), exactly as training did.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from medvol.logs import get_logger
from medvol.prediction.claims import Claims, claim_path
from medvol.prediction.options import DoneElsewhere, Options, Outcome
from medvol.prediction.pipeline import run_pipeline
from medvol.prediction.writers import output_paths, read_predictions, write_csv, write_dicom_seg

if TYPE_CHECKING:
    from medvol.engine.inference import Segmentation, TrainedModel
    from medvol.prediction.discovery import Scan
    from medvol.volume import Volume


logger = get_logger(__name__)


class Worker(Protocol):
    """What a job needs of the invocation running it (``medvol.prediction.predictor.Predictor``)."""

    options: Options
    out_dir: Path
    predictions_path: Path
    claims: Claims

    def claim(self, scan: Scan) -> Path: ...

    def load(self, scan: Scan) -> Volume: ...

    def bar(self, total: int) -> Any: ...

    def settle(self, outcome: Outcome, scan: Scan, error: BaseException) -> None: ...


CLASSIFIER_BATCH = 32
CSV_FLUSH_SECONDS = 10.0


def segment_scans(predictor: Worker, trained: TrainedModel, scans: list[Scan], outcome: Outcome) -> None:
    """Write each scan's label map (and probabilities, DICOM SEG) on its own grid; skip finished ones."""
    from medvol.engine.inference import segment
    from medvol.io import save
    from medvol.volume import Volume

    options = predictor.options

    def outputs(scan: Scan) -> list[Any]:
        return output_paths(scan, predictor.out_dir, options.probabilities, options.dicom_seg)

    todo = []
    for scan in scans:
        if not options.overwrite and all(p.is_file() for p in outputs(scan)):
            outcome.skipped += 1
        else:
            todo.append(scan)
    no_seg = [s for s in todo if options.dicom_seg and s.is_dicom and not s.single_frame_series]
    if no_seg:
        logger.warning(
            "%d DICOM input(s) are multi-frame or mosaic files; DICOM SEG is written for single-frame "
            "series only (their NIfTI label maps are written)",
            len(no_seg),
        )

    def prepare(scan: Scan) -> Volume:
        predictor.claim(scan)
        if not options.overwrite and all(p.is_file() for p in outputs(scan)):
            raise DoneElsewhere(scan.relative)
        return predictor.load(scan)

    def compute(volumes: list[Volume]) -> list[Segmentation]:
        return [
            segment(
                trained,
                volume,
                flip_tta=options.flip_tta,
                largest_component=options.largest_component,
                keep_probabilities=options.probabilities,
            )
            for volume in volumes
        ]

    def finish(scan: Scan, result: Segmentation) -> None:
        label_path, *others = outputs(scan)
        meta = {"source_path": scan.relative}
        if options.probabilities:
            assert result.probabilities is not None
            probabilities = result.probabilities
            save(Volume(probabilities.array, probabilities.affine, meta), others.pop(0))
        if others:  # DICOM SEG
            write_dicom_seg(scan, result.label.array[0], trained, others.pop(0))
        save(Volume(result.label.array, result.label.affine, meta), label_path)  # last: marks it done

    with predictor.bar(len(todo)) as bar:

        def done(scan: Scan) -> None:
            outcome.predicted += 1
            predictor.claims.release(claim_path(predictor.out_dir / scan.name))
            bar.update()

        def failed(scan: Scan, error: BaseException) -> None:
            predictor.settle(outcome, scan, error)
            bar.note(failed=len(outcome.failures))
            bar.update()

        run_pipeline(todo, prepare, compute, finish, workers=options.workers, on_failure=failed, on_done=done)


def classify_scans(
    predictor: Worker, trained: TrainedModel, scans: list[Scan], outcome: Outcome
) -> dict[str, Any]:
    """Add a ``predictions.csv`` row per scan (resuming an earlier table); returns how inputs were made."""
    from medvol.engine.inference import classify, prepare_input

    options = predictor.options
    spec = trained.input_spec
    classes = trained.num_classes
    header = ["case_id", "input", *[f"probability_{k}" for k in range(classes)], "predicted_class"]
    path = predictor.predictions_path
    rows = {} if options.overwrite else read_predictions(path, header)
    rows_lock = threading.Lock()  # finish() adds rows in pool threads, flush() reads them here
    todo = [scan for scan in scans if scan.case_id not in rows]
    outcome.skipped += len(scans) - len(todo)
    last_flush = time.monotonic()
    written: list[Scan] = []  # predicted, row not yet in the file: their claims are kept until it is
    on_disk: dict[str, Any] = {"stamp": None, "cases": set()}

    def flush() -> None:
        """Merge this process's rows into the table on disk (other workers add theirs too)."""
        with predictor.claims.exclusive(claim_path(path)):
            with rows_lock:
                merged = {} if options.overwrite else read_predictions(path, header)
                merged.update(rows)
                table = [merged[key] for key in sorted(merged)]
                done = list(written)
                written.clear()
            write_csv(path, header, table)
        for scan in done:
            predictor.claims.release(claim_path(predictor.out_dir / scan.name))

    def in_table(case_id: str) -> bool:
        """Whether another process already wrote this case's row (the table is re-read when it changed)."""
        with rows_lock:
            try:
                stat = path.stat()
            except FileNotFoundError:
                return False
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != on_disk["stamp"]:
                on_disk["stamp"], on_disk["cases"] = stamp, set(read_predictions(path, header))
            return case_id in on_disk["cases"]

    def prepare(scan: Scan) -> np.ndarray:
        predictor.claim(scan)
        if not options.overwrite and in_table(scan.case_id):
            raise DoneElsewhere(scan.relative)
        return prepare_input(trained, predictor.load(scan)).array

    def compute(inputs: list[np.ndarray]) -> list[np.ndarray]:
        return list(classify(trained, np.stack(inputs)))

    def finish(scan: Scan, probabilities: np.ndarray) -> None:
        values = [f"{float(p):.6f}" for p in probabilities]
        with rows_lock:
            rows[scan.case_id] = [scan.case_id, scan.relative, *values, int(np.argmax(probabilities))]

    with predictor.bar(len(todo)) as bar:

        def done(scan: Scan) -> None:
            nonlocal last_flush
            outcome.predicted += 1
            with rows_lock:
                written.append(scan)
            bar.update()
            if time.monotonic() - last_flush > CSV_FLUSH_SECONDS:
                flush()
                last_flush = time.monotonic()

        def failed(scan: Scan, error: BaseException) -> None:
            predictor.settle(outcome, scan, error)
            bar.update()

        try:
            run_pipeline(
                todo,
                prepare,
                compute,
                finish,
                batch_size=CLASSIFIER_BATCH,
                workers=options.workers,
                on_failure=failed,
                on_done=done,
            )
        finally:
            flush()
    return {"shape": list(spec.shape or ()), "channels": spec.channels, "how": trained.task.describe_input()}
