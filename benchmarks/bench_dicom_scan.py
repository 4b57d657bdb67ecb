"""Header scan of large DICOM folders: medvol against a bare pydicom loop and GDCM, in one run.

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_dicom_scan.py [--files 5000 50000] [--quick] [--out results.json]

For each folder size (default 5,000 and 50,000 files) the script generates,
once, a tree of small CT files (32x32 int16, 100 slices per series, ten series
per patient folder, each series in its own subfolder, realistic header
elements including patient, equipment and private ones), plus a few non-DICOM
files and a few broken DICOM files, and caches it (``--cache``, default a
``medvol-bench-dicom-scan`` folder in the system's temporary folder). It then
times, interleaved, best of ``--repeats``:

- ``medvol_scan_folder``: ``medvol.io.dicom.scan_folder(folder, collect_errors=True)``,
  what ``medvol info``, ``medvol.load_all`` and ``medvol index`` call to list
  the series of a folder (process pool on large folders);
- ``medvol_scan_one_process``: the same with its process pool switched off;
- ``pydicom_loop`` (baseline): a bare one-process loop over every file,
  ``dcmread(path, stop_before_pixels=True, specific_tags=[the six tags a series
  listing shows])``, grouping paths by SeriesInstanceUID and skipping what
  pydicom cannot read;
- ``sitk_gdcm_series``: SimpleITK's GDCM scan, ``GetGDCMSeriesIDs`` and
  ``GetGDCMSeriesFileNames`` per subfolder (GDCM does not recurse).

Peak memory is measured for each reader and size in a fresh process: growth of
VmHWM over the imports, the pool workers' own peak (``children_maxrss_mib``),
and for the one-process Python readers, in another process, tracemalloc's
peak of the Python heap and what the returned records keep. The JSON report goes to stdout (and ``--out``);
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import SimpleITK as sitk
from common import environment, finish_report, make_log, stdout_to_stderr
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import medvol

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SLICES_PER_SERIES = 100
SERIES_PER_PATIENT = 10
MATRIX = 32
EXTRA_FILES = 6  # per generated folder: 3 not DICOM, 3 broken DICOM
LISTING_TAGS = ["SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "Rows", "Columns"]
READERS = ("pydicom_loop", "medvol_scan_folder", "medvol_scan_one_process", "sitk_gdcm_series")
TRACED_READERS = ("pydicom_loop", "medvol_scan_one_process")
MiB = 1024 * 1024

log = make_log("bench_dicom_scan")
sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warns of every folder without a series


# ------------------------------------------------------------------ synthetic tree


def series_template(patient: int, series: int) -> Dataset:
    """One CT series' shared header: patient, study, equipment, image and a private block."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240102"
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "101500.000000"
    ds.AccessionNumber = f"ACC{patient:06d}"
    ds.Modality = "CT"
    ds.Manufacturer = "medvol benchmark"
    ds.InstitutionName = "Synthetic General Hospital"
    ds.ReferringPhysicianName = "Doe^Referrer"
    ds.StationName = "CT01"
    ds.StudyDescription = "CT chest abdomen pelvis"
    ds.SeriesDescription = f"axial {series} 1.0 mm"
    ds.ManufacturerModelName = "Synthetic 64"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "CTCAP", "L", "CT chest abdomen pelvis"
    ds.ProcedureCodeSequence = Sequence([code])
    ds.PatientName = f"Synthetic^Patient{patient}"
    ds.PatientID = f"P{patient:06d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.PatientAge = "054Y"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.SoftwareVersions = "1.0"
    ds.ProtocolName = "CAP routine"
    ds.ConvolutionKernel = "B30f"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["medvol-bench-scan", str(patient)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["medvol-bench-scan", str(patient), str(series)])
    ds.StudyID = "1"
    ds.SeriesNumber = series + 1
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["medvol-bench-scan", str(patient), "frame"])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = MATRIX
    ds.PixelSpacing = [0.7, 0.7]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    block = ds.private_block(0x0029, "MEDVOL BENCH", create=True)
    block.add_new(0x10, "OB", bytes(range(256)) * 4)  # a vendor's opaque kilobyte
    ds.PixelData = bytes(MATRIX * MATRIX * 2)
    return ds


def write_slice(template: Dataset, index: int, path: Path) -> None:
    """Write slice ``index`` of a series: its own SOP instance, instance number and position."""
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    template.file_meta = meta
    template.SOPInstanceUID = uid
    template.InstanceNumber = index + 1
    template.ImagePositionPatient = [-11.2, -11.2, f"{-100.0 + index:.1f}"]
    template.SliceLocation = f"{-100.0 + index:.1f}"
    template.save_as(path, enforce_file_format=True)


def write_extras(folder: Path) -> None:
    """Files a real export holds besides images: notes, a thumbnail, and broken DICOM files."""
    (folder / "README.txt").write_text("exported by a synthetic PACS\n")
    (folder / "manifest.json").write_text('{"study": "synthetic"}\n')
    (folder / "thumbnail.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    good = next(folder.rglob("IM0000.dcm")).read_bytes()
    (folder / "broken_empty.dcm").write_bytes(b"")
    (folder / "broken_cut_header.dcm").write_bytes(good[:400])
    (folder / "broken_cut_pixels.dcm").write_bytes(good[:-500])


def generate(folder: Path, files: int) -> Path:
    """Write (once) ``files`` image files in series of 100 below ``folder``, plus the extras.

    Layout ``P0001/S03/IM0042.dcm``: ten series per patient folder. A complete
    tree is marked by ``folder.done`` beside it, so later runs reuse it.
    """
    done = folder.with_name(folder.name + ".done")
    if done.exists():
        return folder
    series = -(-files // SLICES_PER_SERIES)
    log(f"writing {files} files in {series} series to {folder} (once)")
    started = time.perf_counter()
    for number in range(series):
        patient, in_patient = divmod(number, SERIES_PER_PATIENT)
        template = series_template(patient, in_patient)
        series_folder = folder / f"P{patient:04d}" / f"S{in_patient:02d}"
        series_folder.mkdir(parents=True, exist_ok=True)
        for index in range(min(SLICES_PER_SERIES, files - number * SLICES_PER_SERIES)):
            write_slice(template, index, series_folder / f"IM{index:04d}.dcm")
    write_extras(folder)
    done.write_text(json.dumps({"files": files, "series": series, "write_s": time.perf_counter() - started}))
    return folder


def warm_page_cache(folder: Path) -> int:
    """Read every file once so that every reader starts from a warm page cache; returns bytes."""
    total = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as handle:
                total += len(handle.read())
    return total


# ----------------------------------------------------------------------- readers


def pydicom_loop(folder: Path) -> dict[str, list[str]]:
    """Baseline: one process, one ``dcmread`` per file, paths grouped by SeriesInstanceUID."""
    groups: dict[str, list[str]] = {}
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=LISTING_TAGS)
                uid = str(ds.SeriesInstanceUID)
            except Exception:  # not DICOM, empty, cut short
                continue
            groups.setdefault(uid, []).append(path)
    return groups


def medvol_scan_folder(folder: Path) -> list[Any]:
    """``medvol.io.dicom.scan_folder`` as ``medvol info`` and ``medvol index`` call it."""
    from medvol.io.dicom import scan_folder

    return scan_folder(folder, collect_errors=True)[0]


def medvol_scan_one_process(folder: Path) -> list[Any]:
    """``scan_folder`` with its process pool switched off: what one core does."""
    from medvol.io import dicom

    threshold = dicom.PARALLEL_SCAN_MIN_FILES
    dicom.PARALLEL_SCAN_MIN_FILES = sys.maxsize
    try:
        return medvol_scan_folder(folder)
    finally:
        dicom.PARALLEL_SCAN_MIN_FILES = threshold


def sitk_gdcm_series(folder: Path) -> dict[str, list[str]]:
    """SimpleITK/GDCM: series ids and their sorted files, folder by folder (GDCM does not recurse)."""
    found: dict[str, list[str]] = {}
    for root, dirs, _names in os.walk(folder):
        dirs.sort()
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(root):
            found[uid] = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(root, uid))
    return found


CALLS: dict[str, Callable[[Path], Any]] = {
    "pydicom_loop": pydicom_loop,
    "medvol_scan_folder": medvol_scan_folder,
    "medvol_scan_one_process": medvol_scan_one_process,
    "sitk_gdcm_series": sitk_gdcm_series,
}


def series_found(reader: str, folder: Path) -> int:
    return len(CALLS[reader](folder))


# ------------------------------------------------------------------------ timing


def best_times(folder: Path, repeats: int) -> dict[str, list[float]]:
    """Wall-clock seconds of every reader, ``repeats`` rounds, readers interleaved in each round."""
    times: dict[str, list[float]] = {name: [] for name in READERS}
    for round_number in range(repeats):
        for name in READERS:
            start = time.perf_counter()
            CALLS[name](folder)
            times[name].append(time.perf_counter() - start)
        log(f"  round {round_number + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()))
    return times


def summarize(times: dict[str, list[float]], files: int) -> dict[str, dict[str, Any]]:
    """Best seconds per reader, microseconds per file, and the ratio to the baseline's best."""
    base = min(times["pydicom_loop"])
    return {
        name: {
            "best_s": round(min(runs), 3),
            "us_per_file": round(min(runs) / files * 1e6, 1),
            "ratio_to_baseline": round(min(runs) / base, 3),
            "runs_s": [round(t, 3) for t in runs],
        }
        for name, runs in times.items()
    }


# ------------------------------------------------------------------- peak memory


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (``VmHWM``, ``VmRSS``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(reader: str, folder: Path, traced: bool) -> None:
    """In a fresh process: one call, then print its memory figures as JSON.

    Untraced: growth of VmHWM over the imports, and the largest pool worker's
    peak RSS. Traced (tracemalloc, which itself costs memory): the Python heap's
    peak during the call and what the returned records keep.
    """
    import medvol.io.dicom  # noqa: F401  (imports are not the scan's memory)

    if traced:
        tracemalloc.start()
    before = status_mib("VmHWM")
    result = CALLS[reader](folder)
    if traced:
        kept, peak = tracemalloc.get_traced_memory()
        out = {"traced_peak_mib": round(peak / MiB, 1), "traced_kept_mib": round(kept / MiB, 1)}
    else:
        out = {
            "vmhwm_growth_mib": round(status_mib("VmHWM") - before, 1),
            "children_maxrss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        }
    print(json.dumps({**out, "series": len(result)}))


def peak_memory(folder: Path) -> dict[str, Any]:
    """Every reader's memory in fresh processes; the one-process Python readers also traced."""
    out: dict[str, Any] = {}
    for reader in READERS:
        figures: dict[str, Any] = {}
        for traced in (False, True) if reader in TRACED_READERS else (False,):
            command = [sys.executable, __file__, "--memory-child", reader, str(folder)]
            command += ["--traced"] if traced else []
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            figures.update(json.loads(done.stdout.strip().splitlines()[-1]))
        out[reader] = figures
    return out


def flatness(small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    """Memory per extra file between two sizes: peak growth vs what the returned records keep."""
    files = large["files"] - small["files"]
    out: dict[str, Any] = {}
    for reader in READERS:
        a, b = small["memory"][reader], large["memory"][reader]
        row = {
            f"{key}_bytes_per_file": round((b[f"{key}_mib"] - a[f"{key}_mib"]) * MiB / files)
            for key in ("vmhwm_growth", "traced_peak", "traced_kept")
            if f"{key}_mib" in a
        }
        if "traced_peak_mib" in a:
            row["traced_transient_mib"] = [
                round(x["traced_peak_mib"] - x["traced_kept_mib"], 1) for x in (a, b)
            ]
        out[reader] = row
    return out


# -------------------------------------------------------------------------- main


def measure(folder: Path, files: int, repeats: int, memory: bool) -> dict[str, Any]:
    """Counts, best-of times and (optionally) memory of every reader on one generated tree."""
    log(f"{files} files: warming the page cache ({warm_page_cache(folder) / MiB:.0f} MiB)")
    found = {name: series_found(name, folder) for name in READERS}
    times = best_times(folder, repeats)
    case: dict[str, Any] = {
        "files": files,
        "extra_files": EXTRA_FILES,
        "series_expected": -(-files // SLICES_PER_SERIES),
        "series_found": found,
        "results": summarize(times, files),
    }
    if memory:
        log(f"{files} files: memory, one fresh process per reader")
        case["memory"] = peak_memory(folder)
    return case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, nargs="+", default=[5000, 50000], help="folder sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the best is reported")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "medvol-bench-dicom-scan")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1,000 files, one round, no memory")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--memory-child", nargs=2, metavar=("READER", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child[0], Path(args.memory_child[1]), args.traced)
        return 0
    if args.quick:
        args.files, args.repeats, args.no_memory = [1000], 1, True
    started = time.perf_counter()
    machine = environment()
    cases: dict[str, Any] = {}
    with stdout_to_stderr():
        for files in args.files:
            folder = generate(args.cache / f"files-{files}", files)
            cases[str(files)] = measure(folder, files, args.repeats, not args.no_memory)
    report: dict[str, Any] = {
        "medvol_imported_from": str(Path(medvol.__file__).parent),
        "quick": args.quick,
        "timing": "best of the rounds, wall-clock, warm page cache; readers interleaved in each round",
        "environment": machine,
        "cases": cases,
    }
    sizes = sorted(cases, key=int)
    if len(sizes) > 1 and all("memory" in cases[s] for s in sizes):
        small, large = cases[sizes[0]], cases[sizes[-1]]
        report["memory_per_extra_file"] = flatness(small, large)
    finish_report(report, started, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
