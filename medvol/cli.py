"""The ``medvol`` command line: one entry point, one verb per task.

Heavy libraries are imported inside the verbs so that ``medvol --help`` is
instant. Errors print one line naming the file and the problem and exit
non-zero; ``--debug`` shows the traceback instead. Library messages are
shown through ``medvol.logs.console``: progress on stdout, warnings on stderr
as ``medvol: warning: ...``, debug messages with ``--debug``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

EXIT_ERROR = 1
DATA_DIR_HELP = (
    "folder of the studies' data (default: $MEDVOL_DATA, else the per-user cache folder, "
    "~/.cache/medvol/data on Linux)"
)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler ending a job, ``kill``): unwinds like Ctrl-C, so runs record how they ended."""


@contextlib.contextmanager
def _termination_as_interrupt() -> Iterator[None]:
    """Raise ``Terminated`` on SIGTERM while a verb runs (main thread only), then restore the handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code.

    A process that joined a torchrun process group (``medvol train`` under torchrun)
    ends here instead, with that code (``medvol.engine.distributed.end_process_if_joined``).
    """
    code = _run_verb(argv)
    if "medvol.engine.distributed" in sys.modules:  # not imported here: it would load torch for every verb
        sys.modules["medvol.engine.distributed"].end_process_if_joined(code)
    return code


def _run_verb(argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run its verb; returns the exit code, and prints one line on an error."""
    from medvol.logs import console

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with console(debug=args.debug), _termination_as_interrupt():
            return int(args.run(args) or 0)
    except Terminated:
        print("medvol: stopped (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("medvol: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:
        from medvol.errors import MedvolError

        if args.debug:
            raise
        if isinstance(error, MedvolError):
            print(f"medvol: error: {error}", file=sys.stderr)
        elif _missing_training_package(error):
            print(f"medvol: error: {_missing_training_package(error)}", file=sys.stderr)
        else:
            print(
                f"medvol: unexpected error: {type(error).__name__}: {error} (rerun with --debug)",
                file=sys.stderr,
            )
        return EXIT_ERROR


TRAINING_PACKAGES = ("torch", "monai", "tensorboard")
"""What ``medvol[train]`` adds; predicting from a model package (``medvol[infer]``) needs none of them."""


def _missing_training_package(error: BaseException) -> str | None:
    """What to install, when ``error`` is the import of a training package that is not installed."""
    name = (getattr(error, "name", None) or "").split(".")[0]
    if not isinstance(error, ModuleNotFoundError) or name not in TRAINING_PACKAGES:
        return None
    return (
        f"this needs {name}, which is not installed: pip install 'medvol[train]' "
        "(predicting from a model package of `medvol export` needs only 'medvol[infer]')"
    )


def build_parser() -> argparse.ArgumentParser:
    # --debug works before or after the verb: the verbs' copy does not reset it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logs"
    )

    parser = argparse.ArgumentParser(
        prog="medvol",
        description="3D medical image classification and segmentation toolkit.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--version", action="version", version=f"medvol {_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_info(verbs, common)
    _add_convert(verbs, common)
    _add_index(verbs, common)
    _add_plan(verbs, common)
    _add_synthesize(verbs, common)
    _add_train(verbs, common)
    _add_pretrain(verbs, common)
    _add_runs(verbs, common)
    _add_evaluate(verbs, common)
    _add_predict(verbs, common)
    _add_export(verbs, common)
    _add_report(verbs, common)
    _add_reproduce(verbs, common)
    _add_fetch(verbs, common)
    _add_demo(verbs, common)
    return parser


def _add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE``, repeatable, collected in ``overrides``."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def _add_info(verbs: Any, common: argparse.ArgumentParser) -> None:
    info = verbs.add_parser(
        "info", parents=[common], help="describe an image or the DICOM series in a folder"
    )
    info.add_argument("path", type=Path, help="DICOM folder or file, NIfTI, NRRD or MetaImage")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--series", help="with a DICOM folder: describe only this series (number or UID)")
    info.add_argument(
        "--volume",
        help="with a DICOM series of several volumes (echoes, time points...): describe only this one "
        "(number as listed), or 'all' stacked as channels",
    )
    info.add_argument("--allow-nan", action="store_true", help="accept NaN/infinite voxels")
    info.set_defaults(run=run_info)


def _add_convert(verbs: Any, common: argparse.ArgumentParser) -> None:
    convert = verbs.add_parser("convert", parents=[common], help="convert a scan to NIfTI, NRRD or MetaImage")
    convert.add_argument("source", type=Path, help="DICOM folder or file, NIfTI, NRRD or MetaImage")
    convert.add_argument("target", type=Path, help="output file: .nii, .nii.gz, .nrrd or .mha")
    convert.add_argument("--series", help="with a DICOM folder of several series: which one (number or UID)")
    convert.add_argument(
        "--volume",
        help="with a DICOM series of several volumes (echoes, time points...): write only this one "
        "(number as listed), or 'all' as one 4-D file; by default each volume goes to its own file, "
        "TARGET with a suffix such as _e1, _e2",
    )
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    convert.add_argument("--allow-nan", action="store_true", help="accept NaN/infinite voxels")
    convert.set_defaults(run=run_convert)


def _add_index(verbs: Any, common: argparse.ArgumentParser) -> None:
    index = verbs.add_parser(
        "index",
        parents=[common],
        help="find and validate the cases of a dataset folder, write a manifest",
        epilog="Exit status: 0 when no error was found (warnings allowed); 1 when a case or manifest "
        "row is unusable or no case is usable (the manifest and the report are written all the same).",
    )
    index.add_argument(
        "root",
        type=Path,
        help="dataset folder (imagesTr/labelsTr, images/labels, ID_image + ID_label files, a folder per "
        "class of clips, or DICOM series), a .csv or a MedMNIST .npz",
    )
    index.add_argument(
        "--out", type=Path, required=True, help="manifest CSV to write (its paths are relative to its folder)"
    )
    index.add_argument(
        "--classes", type=_label_values, help="allowed label values, e.g. 0,1,2 (default: dataset.json)"
    )
    index.add_argument(
        "--pair",
        nargs=2,
        metavar=("IMAGE_PATTERN", "LABEL_PATTERN"),
        help="pair image and label files by patterns relative to root, {id} naming the case, "
        "e.g. '{id}_t1.nii.gz' '{id}_roi.nii.gz'",
    )
    index.add_argument(
        "--mask-series",
        metavar="REGEX",
        help="DICOM series whose SeriesDescription matches REGEX are masks (default: mask|seg|label|roi)",
    )
    index.add_argument(
        "--image-series",
        metavar="REGEX",
        help="pair DICOM masks only with image series whose SeriesDescription matches REGEX "
        "(when several series lie on a mask's grid)",
    )
    index.add_argument(
        "--recheck",
        action="store_true",
        help="read every file again, ignoring what earlier checks stored (by default a case whose files "
        "kept their size and modification time is not read again)",
    )
    index.add_argument(
        "--volume",
        type=_volume_choice,
        help="with DICOM series of several volumes (echoes, time points...): use this one for every case "
        "(its number as `medvol info` lists them), or 'all' to take every volume as a channel; written to "
        "the manifest's volume column",
    )
    index.add_argument(
        "--min-frames",
        type=int,
        metavar="N",
        help="clips (videos, DICOM cine loops) with fewer frames than N are errors (too_short); "
        "training uses data.clip's span, (frames - 1) × stride + 1",
    )
    index.add_argument("--json", action="store_true", help="print the validation report as JSON")
    index.set_defaults(run=run_index)


def _add_plan(verbs: Any, common: argparse.ArgumentParser) -> None:
    plan = verbs.add_parser(
        "plan", parents=[common], help="fingerprint a dataset and write an editable preprocessing plan"
    )
    plan.add_argument("root", type=Path, help="dataset folder or .csv manifest")
    plan.add_argument("--out", type=Path, default=Path("plan.yaml"), help="plan to write (default plan.yaml)")
    plan.add_argument("--modality", help="CT, MR, ... (default: from the images' metadata)")
    plan.set_defaults(run=run_plan)


def _add_synthesize(verbs: Any, common: argparse.ArgumentParser) -> None:
    synthesize = verbs.add_parser(
        "synthesize", parents=[common], help="write synthetic training variants of labelled cases"
    )
    synthesize.add_argument("source", type=Path, help="dataset folder, .csv manifest, or experiment YAML")
    synthesize.add_argument("--per-case", type=int, required=True, help="variants per labelled case")
    synthesize.add_argument("--out", type=Path, required=True, help="output folder (flat images/ labels/)")
    synthesize.add_argument(
        "--mode",
        choices=["augment", "labels-to-image"],
        default="augment",
        help="augment real images, or draw new images from label maps (SynthSeg-style)",
    )
    synthesize.add_argument("--seed", type=int, default=0)
    synthesize.set_defaults(run=run_synthesize)


def _add_train(verbs: Any, common: argparse.ArgumentParser) -> None:
    train = verbs.add_parser("train", parents=[common], help="train a model from a YAML config")
    train.add_argument("config", type=Path, help="experiment YAML (see configs/)")
    _add_overrides(train, "override a config key")
    train.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    train.set_defaults(run=run_train)


def _add_pretrain(verbs: Any, common: argparse.ArgumentParser) -> None:
    pretrain = verbs.add_parser(
        "pretrain",
        parents=[common],
        help="self-supervised pretraining on the training images, without labels (for model.init)",
        description="Train the config's model to restore its training images from Models-Genesis-style "
        "distortions (no label is used); writes RUN/checkpoints/pretrained.pt, which model.init loads.",
    )
    pretrain.add_argument("config", type=Path, help="experiment YAML (the one the supervised run uses)")
    _add_overrides(pretrain, "override a config key (e.g. tracking.name=pretrain, train.epochs=50)")
    pretrain.set_defaults(run=run_pretrain)


def _add_runs(verbs: Any, common: argparse.ArgumentParser) -> None:
    runs = verbs.add_parser(
        "runs", parents=[common], help="compare runs: settings and best metrics side by side"
    )
    runs.add_argument("folder", type=Path, nargs="?", default=Path("runs"), help="folder of run folders")
    runs.add_argument(
        "--mlflow",
        metavar="URI",
        help="list the runs of this MLflow tracking server (e.g. http://host:5000) instead of a folder",
    )
    runs.add_argument("--json", action="store_true", help="machine-readable output")
    runs.set_defaults(run=run_runs)


def _add_evaluate(verbs: Any, common: argparse.ArgumentParser) -> None:
    evaluate = verbs.add_parser(
        "evaluate", parents=[common], help="score a trained run on its validation or test cases, with CIs"
    )
    evaluate.add_argument("run_dir", type=Path, help="run folder written by `medvol train`")
    which = evaluate.add_mutually_exclusive_group()
    which.add_argument("--split", choices=["val", "test"], default="val", help="which split (default val)")
    which.add_argument("--cases", type=Path, help="manifest CSV of other labelled cases (`medvol index`)")
    evaluate.add_argument("--checkpoint", choices=["best", "last"], default="best")
    evaluate.add_argument("--out", type=Path, help="output folder (default RUN_DIR/evaluation-SPLIT)")
    evaluate.add_argument("--threshold", type=float, default=0.5, help="classification decision threshold")
    evaluate.add_argument(
        "--n-resamples",
        "--bootstrap",
        dest="n_resamples",
        type=int,
        default=2000,
        help="bootstrap resamples for the CIs (default 2000)",
    )
    evaluate.add_argument(
        "--flip-tta",
        "--tta",
        dest="flip_tta",
        action="store_true",
        help="average over flips of the axes the run was trained to flip (segmentation)",
    )
    evaluate.add_argument(
        "--largest-component",
        action="store_true",
        help="score with only the largest component of each class kept (segmentation)",
    )
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    evaluate.set_defaults(run=run_evaluate)


def _add_predict(verbs: Any, common: argparse.ArgumentParser) -> None:
    predict = verbs.add_parser("predict", parents=[common], help="run a trained model over a folder of scans")
    predict.add_argument(
        "run_dir", type=Path, help="run folder written by `medvol train`, or model package (`medvol export`)"
    )
    predict.add_argument(
        "in_dir", type=Path, help="folder of scans (DICOM series, NIfTI, NRRD, MHA), searched recursively"
    )
    predict.add_argument("out_dir", type=Path, help="output folder")
    predict.add_argument("--checkpoint", choices=["best", "last"], default="best")
    predict.add_argument(
        "--flip-tta",
        "--tta",
        dest="flip_tta",
        action="store_true",
        help="average over flips of the axes the run was trained to flip (segmentation)",
    )
    predict.add_argument(
        "--largest-component", action="store_true", help="keep the largest component of each class"
    )
    predict.add_argument(
        "--volume",
        type=_volume_choice,
        help="with DICOM series of several volumes (echoes, time points...): predict from this one (its "
        "number as `medvol info` lists them), or 'all' to give the model every volume as a channel",
    )
    predict.add_argument("--probabilities", action="store_true", help="also write probability maps")
    predict.add_argument("--dicom-seg", action="store_true", help="also write DICOM SEG for DICOM inputs")
    predict.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    predict.add_argument("--shard", default=None, metavar="I/N", help="take shard I of N (0-based)")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    predict.add_argument(
        "--engine",
        choices=["auto", "torch", "onnxruntime"],
        default="auto",
        help="what runs the network (auto: torch for a run folder, ONNX Runtime for a model package)",
    )
    predict.set_defaults(run=run_predict)


def _add_export(verbs: Any, common: argparse.ArgumentParser) -> None:
    export = verbs.add_parser(
        "export", parents=[common], help="write a run's model package (ONNX network, spec, model card)"
    )
    export.add_argument("run_dir", type=Path, help="run folder written by `medvol train`")
    export.add_argument("out", type=Path, help="package folder to write")
    export.add_argument("--checkpoint", choices=["best", "last"], default="best")
    export.add_argument("--overwrite", action="store_true", help="replace an existing package folder")
    export.add_argument(
        "--int8",
        action="store_true",
        help="quantise the network to int8 (ONNX Runtime, QDQ, per-channel weights), calibrated on "
        "training cases of the run; off by default (docs/benchmarks.md measures its cost)",
    )
    export.add_argument(
        "--calibration-cases",
        type=int,
        metavar="N",
        help="training cases drawn (seed 0) to calibrate --int8 (default 16; all when the run has fewer)",
    )
    export.set_defaults(run=run_export)


def _add_report(verbs: Any, common: argparse.ArgumentParser) -> None:
    report = verbs.add_parser(
        "report", parents=[common], help="write an HTML or Markdown report and model card for a run"
    )
    report.add_argument("run_dir", type=Path, help="run folder written by `medvol train`")
    report.add_argument("--format", choices=["html", "md"], default="html")
    report.add_argument("--out", type=Path, help="output folder (default RUN_DIR/report)")
    report.set_defaults(run=run_report)


def _add_reproduce(verbs: Any, common: argparse.ArgumentParser) -> None:
    reproduce = verbs.add_parser(
        "reproduce", parents=[common], help="re-run a published study over seeds and compare the numbers"
    )
    reproduce.add_argument("name", nargs="?", help="study name (see --list) or a study YAML")
    reproduce.add_argument("--list", action="store_true", help="list the studies")
    reproduce.add_argument("--budget", default="cpu", help="cpu (2 cores) or full (the published protocol)")
    reproduce.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..K-1 (default 3)")
    reproduce.add_argument(
        "--folds",
        help="cross-validation folds to run, each with every seed, e.g. 0-4 (the field's 5-fold "
        "protocol) or 0,2; the table pools their validation cases (default: the recipe's own fold)",
    )
    reproduce.add_argument("--out", type=Path, help="output folder (default reproductions/NAME-BUDGET)")
    _add_overrides(reproduce, "override a config key in every run (the table then says the protocol changed)")
    reproduce.add_argument("--data-dir", type=Path, help=DATA_DIR_HELP)
    reproduce.add_argument(
        "--publish",
        type=Path,
        metavar="DIR",
        help="also copy results.json, the record of test evaluations, each seed's config and each "
        "evaluation's summary.json and cases.csv to DIR (e.g. docs/results/NAME-BUDGET)",
    )
    reproduce.add_argument(
        "--reuse",
        type=Path,
        metavar="DIR",
        help="take the runs published in DIR (by --publish) instead of training them again, when "
        "trained with the same recipe; the others are trained (e.g. add seeds to a published table)",
    )
    reproduce.set_defaults(run=run_reproduce)


def _add_fetch(verbs: Any, common: argparse.ArgumentParser) -> None:
    fetch = verbs.add_parser(
        "fetch", parents=[common], help="download and verify the data of studies (as reproduce does)"
    )
    fetch.add_argument("names", nargs="+", metavar="NAME", help="study name (see reproduce --list) or YAML")
    fetch.add_argument("--data-dir", type=Path, help=DATA_DIR_HELP)
    fetch.set_defaults(run=run_fetch)


def _add_demo(verbs: Any, common: argparse.ArgumentParser) -> None:
    demo = verbs.add_parser("demo", parents=[common], help="run medvol end to end on the bundled sample data")
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("medvol-demo"),
        help="output folder (default: ./medvol-demo)",
    )
    demo.add_argument("--quick", action="store_true", help="one epoch per model: a smoke test, not a model")
    demo.set_defaults(run=run_demo)


def _version() -> str:
    from medvol.version import __version__

    return __version__


def run_info(args: argparse.Namespace) -> int:
    """Describe every readable series (stdout), list the others with their reason (stderr).

    Exits non-zero when any series or file could not be read.
    """
    from medvol.io import SeriesFailure, SomeSeriesFailedError, load, load_all, load_volumes
    from medvol.io.describe import describe, format_summary

    path: Path = args.path
    failures: list[SeriesFailure] = []
    if args.volume is not None:
        volumes = [load(path, series=args.series, volume=args.volume, allow_nan=args.allow_nan)]
    elif args.series is None:
        try:
            volumes = load_all(path, allow_nan=args.allow_nan)
        except SomeSeriesFailedError as error:
            volumes, failures = error.volumes, error.failures
    else:
        volumes = load_volumes(path, series=args.series, allow_nan=args.allow_nan)
    summaries = [describe(volume) for volume in volumes]
    if args.json and summaries:
        print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, indent=2))
    elif summaries:
        for title, summary in zip(_info_titles(volumes), summaries, strict=True):
            print(f"{path} ({title})")
            print(format_summary(summary))
    if not failures:
        return 0
    print(
        f"medvol: error: {path}: {len(failures)} series or file(s) could not be read "
        f"({len(summaries)} described):",
        file=sys.stderr,
    )
    for failure in failures:
        print(f"  {failure.series}: {failure.error}", file=sys.stderr)
    return EXIT_ERROR


def _info_titles(volumes: Sequence[Any]) -> list[str]:
    """``series 2 of 3``, ``volume 1 of 2`` (a series of several volumes: echoes, time points...),
    both, or ``image``."""
    series_of: list[int] = []
    for volume in volumes:
        starts_series = volume.meta.get("volume_number", 1) == 1
        series_of.append((series_of[-1] if series_of else 0) + starts_series)
    titles = []
    for volume, series in zip(volumes, series_of, strict=True):
        parts = [f"series {series} of {series_of[-1]}"] if series_of[-1] > 1 else []
        if volume.meta.get("volume_number") is not None:
            parts.append(f"volume {volume.meta['volume_number']} of {volume.meta['volumes_in_series']}")
        titles.append(", ".join(parts) or "image")
    return titles


def run_convert(args: argparse.Namespace) -> int:
    """Write the scan, or each volume of a DICOM series of several, after loading them all."""
    from medvol.io import load, load_volumes

    if args.volume is not None:
        volumes = [load(args.source, series=args.series, volume=args.volume, allow_nan=args.allow_nan)]
    else:
        volumes = load_volumes(args.source, series=args.series, allow_nan=args.allow_nan)
    if len(volumes) == 1:
        targets = [args.target]
    else:
        targets = [_volume_target(args.target, volume.meta["volume_suffix"]) for volume in volumes]
    for target in targets:
        _check_convert_target(target, args.overwrite)
    for volume, target in zip(volumes, targets, strict=True):
        _write_converted(volume, target)
    return 0


def _volume_target(target: Path, suffix: str) -> Path:
    """``scan.nii.gz`` with a volume's suffix: ``scan_e2.nii.gz`` (``scan.nii.gz`` for no suffix)."""
    from medvol.io.atomic import full_suffix

    extension = full_suffix(target)
    return target.with_name(target.name[: len(target.name) - len(extension)] + suffix + extension)


def _check_convert_target(target: Path, overwrite: bool) -> None:
    """Refuse an existing output (or another program's sidecar) unless ``overwrite``."""
    from medvol.errors import MedvolError
    from medvol.io.sidecar import sidecar_path, written_by_medvol

    sidecar = sidecar_path(target)
    if target.exists() and not overwrite:
        raise MedvolError(target, "output exists; pass --overwrite to replace it")
    # A sidecar medvol left without its file (a killed convert) is replaced; any other is the user's.
    if sidecar.exists() and not overwrite and not written_by_medvol(sidecar):
        raise MedvolError(sidecar, f"exists, and convert writes {target}'s sidecar there; pass --overwrite")


def _write_converted(volume: Any, target: Path) -> None:
    from medvol.io import save
    from medvol.io.atomic import remove_stale_temporaries
    from medvol.io.sidecar import sidecar_fields, sidecar_path

    sidecar = sidecar_path(target)
    removed = remove_stale_temporaries(target) + remove_stale_temporaries(sidecar)
    if removed:
        print(f"removed {len(removed)} temporary file(s) of an earlier convert of {target} that was killed")
    save(volume, target)
    fields = sidecar_fields(volume.meta)
    if not fields and sidecar.is_file():
        sidecar.unlink()  # an earlier output's sidecar would describe the wrong scan
    spacing = [round(s, 4) for s in volume.spacing]
    shape = list(volume.shape) if volume.num_channels == 1 else [*volume.shape, volume.num_channels]
    which = f"  volume {volume.meta['volume']}" if volume.meta.get("volume") else ""
    print(f"wrote {target}  shape {shape}  spacing {spacing} mm  {volume.orientation}{which}")
    if fields:
        print(f"wrote {sidecar}  modality {fields.get('Modality', 'unknown')}")


def run_index(args: argparse.Namespace) -> int:
    from medvol.data import validate, write_manifest
    from medvol.data.dicom_pairs import MASK_DESCRIPTION, DicomPairing
    from medvol.errors import MedvolError
    from medvol.io.atomic import atomic_path
    from medvol.io.medmnist import is_medmnist_file

    if is_medmnist_file(args.root):
        options = ("pair", "classes", "mask_series", "image_series", "min_frames")
        given = [f"--{name.replace('_', '-')}" for name in options if getattr(args, name)]
        if given:
            verb = "is" if len(given) == 1 else "are"
            raise MedvolError(
                args.root, f"{' and '.join(given)} {verb} for folders and manifests, not MedMNIST files"
            )
        return _index_medmnist(args)
    pairing = DicomPairing(args.mask_series or MASK_DESCRIPTION, args.image_series)
    # With --json, stdout is the report alone: no plain progress lines (a terminal's bar is on stderr).
    progress = None if not args.json or sys.stderr.isatty() else False
    report = validate(
        args.root,
        args.classes,
        args.pair and tuple(args.pair),
        pairing,
        recheck=args.recheck,
        progress=progress,
        volume=args.volume,
        min_frames=args.min_frames,
    )
    write_manifest(report, args.out)
    report_path = args.out.with_suffix(".report.json")
    with atomic_path(report_path) as temporary:
        temporary.write_text(json.dumps(report.to_json(), indent=2))
    failed = not report.usable or any(f.severity == "error" for f in report.findings)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return EXIT_ERROR if failed else 0
    summary = report.summary()
    print(f"{summary['layout']} layout, {summary['cases']} case ids, {summary['usable_pairs']} usable pairs")
    print(f"  {report.checked} case(s) read, {report.reused} unchanged since the last check")
    for finding in report.findings:
        where = f" {finding.path}" if finding.path else ""
        print(f"  {finding.severity:<7} {finding.kind}{where}: {finding.message}")
    print(f"wrote {args.out} and {report_path}")
    return EXIT_ERROR if failed else 0


def _volume_choice(text: str) -> str:
    """``--volume 2`` or ``--volume all``."""
    from medvol.data.case import valid_volume

    if not valid_volume(text.strip().lower()):
        raise argparse.ArgumentTypeError(f"expected a volume number (1, 2, ...) or 'all', got {text!r}")
    return text.strip().lower()


def _label_values(text: str) -> list[int]:
    """``--classes 0,1,2`` as a list of integer label values."""
    try:
        return [int(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integer label values separated by commas, e.g. 0,1,2; got {text!r}"
        ) from None


def _index_medmnist(args: argparse.Namespace) -> int:
    """``medvol index FILE.npz``: the official splits and their class balance."""
    import csv

    from medvol.io.atomic import atomic_path
    from medvol.io.medmnist import describe_medmnist, load_medmnist

    summary = describe_medmnist(args.root)
    with atomic_path(args.out) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "split", "index", "class"])
        for split, data in load_medmnist(args.root).items():
            for index, target in enumerate(data.labels):
                writer.writerow([f"{split}-{index:05d}", split, index, int(target)])
    print(json.dumps(summary, indent=2) if args.json else _format_medmnist(summary))
    return 0


def _format_medmnist(summary: dict[str, Any]) -> str:
    lines = [f"MedMNIST file, volumes of {summary['shape']} voxels"]
    for split, info in summary["splits"].items():
        lines.append(f"  {split:<5} {info['cases']:>5} cases, classes {info['class_counts']}")
    return "\n".join(lines)


def run_plan(args: argparse.Namespace) -> int:
    from medvol.data import validate
    from medvol.data.fingerprint import fingerprint, make_plan, write_plan
    from medvol.errors import MedvolError

    report = validate(args.root)
    if report.unusable_ids:
        print(f"skipping {len(report.unusable_ids)} unusable case(s); see `medvol index` for why")
    if not report.usable:
        bad = report.unusable_ids
        unlabelled = sum(1 for case in report.cases if case.case_id not in bad and not case.annotated)
        raise MedvolError(
            args.root,
            f"no usable case to plan from ({len(report.cases)} found: {len(bad)} unusable, "
            f"{unlabelled} without a label map or class); the plan measures labelled cases, "
            "`medvol index` says what is wrong with each",
        )
    measured = fingerprint(report.usable, modality=args.modality)
    plan = make_plan(measured)
    write_plan(plan, measured, args.out, source=str(args.root))
    print(f"{measured['cases']} cases, modality {measured['modality'] or 'unknown'}")
    print(f"target spacing {plan['preprocess']['spacing_mm']} mm, patch {plan['patch_size']}")
    print(f"wrote {args.out}")
    return 0


def run_synthesize(args: argparse.Namespace) -> int:
    import csv

    from medvol.augment import AugmentConfig, synthesize_cases
    from medvol.data import validate
    from medvol.errors import MedvolError
    from medvol.io.atomic import atomic_path

    if args.per_case < 1:
        raise MedvolError(None, "--per-case must be at least 1")
    root, augment = args.source, None
    if args.source.suffix.lower() in (".yaml", ".yml"):
        from medvol.config import load_config

        config = load_config(args.source)
        root, augment = config.data.root, config.augment or AugmentConfig()
    report = validate(root)
    cases = [(case.images, case.label) for case in report.usable if case.label is not None]
    if not cases:
        raise MedvolError(root, "no usable labelled cases to synthesize from (see `medvol index`)")
    result = synthesize_cases(cases, args.per_case, args.out, args.seed, args.mode, augment=augment)
    print(f"{len(cases)} cases: wrote {len(result.written)} variants, {result.skipped} already there")
    if result.errors:
        with atomic_path(args.out / "errors.csv") as temporary, open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "reason"])
            writer.writerows(result.errors)
        print(f"{len(result.errors)} case(s) failed; see {args.out / 'errors.csv'}")
    print(f"manifest {result.manifest}, preview {result.preview}")
    return 1 if result.errors else 0


def run_train(args: argparse.Namespace) -> int:
    from medvol.config import load_config
    from medvol.engine.train import train

    config = load_config(args.config, args.overrides)
    run_dir = train(config, resume=args.resume)
    print(f"run folder: {run_dir}")
    return 0


def run_pretrain(args: argparse.Namespace) -> int:
    from medvol.config import load_config
    from medvol.engine.pretrain import PRETRAINED, pretrain

    run_dir = pretrain(load_config(args.config, args.overrides))
    print(f"pretrained weights: {run_dir / 'checkpoints' / PRETRAINED} (model.init)")
    return 0


def run_runs(args: argparse.Namespace) -> int:
    from medvol.engine.runs import format_runs, list_mlflow_runs, list_runs

    rows = list_mlflow_runs(args.mlflow) if args.mlflow else list_runs(args.folder)
    print(json.dumps(rows, indent=2) if args.json else format_runs(rows))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """Exit code 1 when some case could not be scored (listed in the summary)."""
    from medvol.evaluation import evaluate_run, format_summary

    evaluation = evaluate_run(
        args.run_dir,
        split=args.split,
        cases=args.cases,
        checkpoint=args.checkpoint,
        out=args.out,
        threshold=args.threshold,
        n_resamples=args.n_resamples,
        flip_tta=args.flip_tta,
        largest_component=args.largest_component,
        device=args.device,
    )
    for notice in evaluation.notices:
        print(f"notice: {notice}")
    print(format_summary(evaluation.summary))
    errors = evaluation.summary.get("errors") or []
    for error in errors:
        where = f" ({error['path']})" if error.get("path") else ""
        print(f"  not scored: {error['case_id']}{where}: {error['problem']}")
    written = "cases.csv, summary.json" + (
        ", predictions/" if evaluation.summary["task"] == "segmentation" else ""
    )
    print(f"wrote {evaluation.out} ({written})")
    return 1 if errors else 0


def run_predict(args: argparse.Namespace) -> int:
    """Exit code 0 when every scan was predicted, 1 when any failed."""
    from medvol.prediction import Options, parse_shard, predict, summary

    options = Options(
        checkpoint=args.checkpoint,
        flip_tta=args.flip_tta,
        largest_component=args.largest_component,
        probabilities=args.probabilities,
        dicom_seg=args.dicom_seg,
        overwrite=args.overwrite,
        device=args.device,
        shard=parse_shard(args.shard),
        engine=args.engine,
        volume=args.volume,
    )
    outcome = predict(args.run_dir, args.in_dir, args.out_dir, options)
    print(summary(outcome, args.out_dir))
    return outcome.exit_code


def run_export(args: argparse.Namespace) -> int:
    from medvol.errors import MedvolError
    from medvol.export import export_run
    from medvol.export.quantize import CALIBRATION_CASES

    if args.calibration_cases is not None and not args.int8:
        raise MedvolError(None, "--calibration-cases applies to --int8 only")
    cases = CALIBRATION_CASES if args.calibration_cases is None else args.calibration_cases
    out = export_run(args.run_dir, args.out, args.checkpoint, args.overwrite, args.int8, cases)
    network = "model.onnx int8" if args.int8 else "model.onnx"
    print(f"wrote {out} ({network}, model.json, config.yaml, MODEL_CARD.md)")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from medvol.report import write_report

    print(f"wrote {write_report(args.run_dir, args.out, args.format)}")
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    from medvol.errors import MedvolError
    from medvol.reproduce import available_studies, format_results, load_study, parse_folds, reproduce

    if args.list:
        for name in available_studies():
            study = load_study(name)
            print(f"{name:<22} budgets {', '.join(study.budgets)}: {study.description}")
        return 0
    if args.name is None:
        raise MedvolError(None, "name a study (see `medvol reproduce --list`)")
    folds = None if args.folds is None else parse_folds(args.folds)
    study = load_study(args.name)
    out = args.out or Path("reproductions") / f"{study.name}-{args.budget}"
    results = reproduce(
        study,
        args.budget,
        args.seeds,
        out,
        args.overrides,
        data_dir=args.data_dir,
        publish=args.publish,
        folds=folds,
        reuse=args.reuse,
    )
    print(format_results(results))
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    if args.publish is not None:
        print(f"copied the results and each evaluation's summary.json and cases.csv to {args.publish}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from medvol.fetch import data_folder, fetch
    from medvol.reproduce import load_study

    data_dir = data_folder(args.data_dir)
    studies = [load_study(name) for name in args.names]
    for study in studies:
        if not study.data:
            print(f"{study.name}: the study lists no data to fetch")
        for source in study.data:
            item = fetch(source, data_dir)
            checked = f"MD5 {source.md5} verified" if item.verified else "not verified (see the warning)"
            print(f"{study.name}: {item.location}  {checked}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from medvol.demo import run

    return run(args.out, main, quick=args.quick)


if __name__ == "__main__":
    raise SystemExit(main())
