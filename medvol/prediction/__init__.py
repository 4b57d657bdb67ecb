"""Batch inference: ``medvol predict RUN_DIR IN_DIR OUT_DIR``.

Modules: ``discovery`` (the scans below ``IN_DIR``), ``sharding``, ``pipeline``
(threads around the model), ``jobs`` (segment, classify), ``writers`` (NIfTI,
DICOM SEG, CSV), ``predictor`` (one invocation).

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

Every input is prepared by the run's task exactly as training prepared it
(``medvol.engine.inference.prepare_input``): a classifier trained on scan
files sees each scan preprocessed, normalised with the run's fitted
normaliser and centre-cropped/padded to ``data.patch_size``; one trained on a
MedMNIST ``.npz`` sees the scan scaled by ``1/255`` as its training arrays
were (so the scan must hold MedMNIST's 0–255 values), resized only when its
shape differs from the training shape.

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

from pathlib import Path

from medvol.prediction.discovery import Failure, Found, Scan, find_scans
from medvol.prediction.options import Options, Outcome
from medvol.prediction.predictor import Predictor
from medvol.prediction.sharding import effective_shard, parse_shard, shard_suffix, take_shard

__all__ = [
    "Failure",
    "Found",
    "Options",
    "Outcome",
    "Predictor",
    "Scan",
    "effective_shard",
    "find_scans",
    "parse_shard",
    "predict",
    "shard_suffix",
    "summary",
    "take_shard",
]


def predict(
    run_dir: str | Path, in_dir: str | Path, out_dir: str | Path, options: Options | None = None
) -> Outcome:
    """Predict every scan below ``in_dir`` with the run in ``run_dir``; see the module docstring."""
    return Predictor(Path(run_dir), Path(in_dir), Path(out_dir), options or Options()).run()


def summary(outcome: Outcome, out_dir: Path) -> str:
    """The lines ``medvol predict`` prints when it is done."""
    elsewhere = f", {len(outcome.elsewhere)} left to another process" if outcome.elsewhere else ""
    lines = [
        f"{outcome.scans} input(s): {outcome.predicted} predicted, {outcome.skipped} already done, "
        f"{len(outcome.failures)} failed{elsewhere}; {outcome.ignored} non-image file(s) ignored",
        f"outputs in {out_dir}",
    ]
    for failure in outcome.failures[:10]:
        lines.append(f"  failed {failure.relative}: {failure.reason}")
    if len(outcome.failures) > 10:
        lines.append(f"  ... and {len(outcome.failures) - 10} more")
    if outcome.failures:
        lines.append(f"see {outcome.files['errors']}")
    return "\n".join(lines)
