"""DICOM loading and header-scanning benchmark: medvol against baselines, in one run.

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_io.py [--quick] [--out results.json]

Cases (every case times its baseline in the same run, interleaved with medvol):

1. ``real_ct_jpeg2000``: the real 20-slice JPEG 2000 CT series from the shared
   data folder, loaded with ``medvol.load`` vs SimpleITK's ImageSeriesReader alone
   (baseline) vs MONAI's ``LoadImage``.
2. ``synthetic_ct_series``: the same three on a generated 300-slice, 512x512 int16,
   uncompressed (Explicit VR Little Endian) CT series.
3. ``scan_many_files``: finding the series among 5,000 small DICOM files with
   ``medvol.io.dicom.scan_folder`` vs a sequential pydicom header loop (baseline)
   vs SimpleITK/GDCM's ``GetGDCMSeriesIDs``.
4. ``scan_reads_no_pixels``: the same number of files with tiny and with huge
   (sparse, 8 MiB) pixel data: scan time and bytes read per file must not grow.
5. ``real_nifti_ct``: a real gzipped CT NIfTI with ``medvol.load`` vs nibabel
   alone (baseline) vs MONAI's ``LoadImage`` (context for "NIfTI loading").
6. ``peak_memory`` (optional, full run only): peak RSS of one load per reader.

Timings are wall-clock medians over warm-page-cache repeats, after one untimed
warm-up call per reader. The JSON report goes to stdout (and to ``--out``);
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from common import environment, finish_report, make_log, stdout_to_stderr
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import medvol
from medvol.io import dicom as medvol_dicom
from medvol.io.discovery import list_files

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_SERIES = Path("dicom") / "ct-jpeg2000-series"
REAL_NIFTI = Path("nifti") / "example_ct_sm.nii.gz"
MiB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    """How big and how often: the full run or the ``--quick`` smoke test."""

    repeats: int
    series_slices: int
    series_matrix: int
    scan_series: int
    scan_slices_per_series: int
    no_pixel_files: int
    no_pixel_matrix: int
    peak_memory: bool


FULL = Sizes(
    repeats=7,
    series_slices=300,
    series_matrix=512,
    scan_series=50,
    scan_slices_per_series=100,
    no_pixel_files=300,
    no_pixel_matrix=2048,
    peak_memory=True,
)
QUICK = Sizes(
    repeats=2,
    series_slices=40,
    series_matrix=256,
    scan_series=3,
    scan_slices_per_series=100,
    no_pixel_files=medvol_dicom.PARALLEL_SCAN_MIN_FILES + 4,
    no_pixel_matrix=1024,
    peak_memory=False,
)


log = make_log("bench_io")


# --------------------------------------------------------------------------- timing


def time_calls(
    calls: dict[str, Callable[[], object]], repeats: int, warm_up: bool = True
) -> dict[str, list[float]]:
    """Wall-clock seconds of each call, ``repeats`` times after one untimed warm-up (unless not asked).

    Calls are interleaved (a, b, c, a, b, c, ...) so that drift in machine load
    or cache state hits every reader alike.
    """
    if warm_up:
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def summarize(times: dict[str, list[float]], baseline: str) -> dict[str, dict[str, Any]]:
    """Median seconds per reader and its ratio to the baseline's median."""
    base = statistics.median(times[baseline])
    return {
        name: {
            "median_s": round(statistics.median(runs), 4),
            "ratio_to_baseline": round(statistics.median(runs) / base, 3),
            "min_s": round(min(runs), 4),
            "runs_s": [round(t, 4) for t in runs],
        }
        for name, runs in times.items()
    }


def bytes_read_so_far() -> int | None:
    """``rchar`` of this process from /proc/self/io (includes reaped child processes)."""
    try:
        with open("/proc/self/io") as handle:
            for line in handle:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# ------------------------------------------------------------------ synthetic DICOM


@dataclass(frozen=True)
class SeriesSpec:
    """Identity and geometry of one synthetic axial CT series."""

    name: str
    series_number: int
    rows: int
    columns: int
    slices: int
    pixel_spacing_mm: float = 0.7
    slice_step_mm: float = 1.0

    @property
    def series_uid(self) -> str:
        return generate_uid(entropy_srcs=["medvol-bench", self.name, "series"])


def ct_header(spec: SeriesSpec, index: int) -> Dataset:
    """A CT Image Storage dataset without pixel data, Explicit VR Little Endian."""
    sop_uid = generate_uid(entropy_srcs=["medvol-bench", spec.name, str(index)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["medvol-bench", "study"])
    ds.SeriesInstanceUID = spec.series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["medvol-bench", "frame"])
    ds.Modality = "CT"
    ds.SeriesNumber = spec.series_number
    ds.SeriesDescription = f"synthetic {spec.name}"
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    half_width = spec.columns * spec.pixel_spacing_mm / 2
    ds.ImagePositionPatient = [-half_width, -half_width, -100.0 + index * spec.slice_step_mm]
    ds.SliceLocation = -100.0 + index * spec.slice_step_mm
    ds.PixelSpacing = [spec.pixel_spacing_mm, spec.pixel_spacing_mm]
    ds.SliceThickness = spec.slice_step_mm
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    return ds


def phantom_slice(rows: int, columns: int, index: int) -> np.ndarray:
    """Stored int16 values: air (0, i.e. -1024 HU) around a soft-tissue disc."""
    y, x = np.ogrid[:rows, :columns]
    disc = (x - columns / 2) ** 2 + (y - rows / 2) ** 2 < (0.4 * min(rows, columns)) ** 2
    return np.where(disc, 1064 + index % 50, 0).astype(np.int16)


def write_series(folder: Path, spec: SeriesSpec, sparse_pixels: bool = False) -> list[Path]:
    """Write ``spec.slices`` files into ``folder``; returns their paths.

    With ``sparse_pixels`` the Pixel Data element is declared at full size but
    left as a hole in a sparse file (zeros, no disk space): a valid file whose
    pixel data is expensive to read and free to skip.
    """
    folder.mkdir(parents=True, exist_ok=True)
    pixel_bytes = spec.rows * spec.columns * 2
    paths = []
    for index in range(spec.slices):
        ds = ct_header(spec, index)
        path = folder / f"{spec.name}_{index:04d}.dcm"
        if not sparse_pixels:
            ds.PixelData = phantom_slice(spec.rows, spec.columns, index).tobytes()
        ds.save_as(path, enforce_file_format=True)
        if sparse_pixels:
            with open(path, "r+b") as handle:
                handle.seek(0, os.SEEK_END)
                # (7FE0,0010) Pixel Data, VR OW, explicit little endian long form.
                handle.write(b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_bytes.to_bytes(4, "little"))
                handle.truncate(handle.tell() + pixel_bytes)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------- readers


def load_medvol(folder: Path) -> np.ndarray:
    """``medvol.load``: header scan, geometry, pixels; array ``(X, Y, Z)``."""
    return medvol.load(folder).array[0]


def load_sitk(folder: Path) -> np.ndarray:
    """SimpleITK alone: GDCM file list, ImageSeriesReader, array ``(Z, Y, X)``."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def monai_loader() -> tuple[str, str, Callable[[Path], np.ndarray]]:
    """MONAI's ``LoadImage(image_only=True)`` with the reader that works here.

    Returns:
        The reader's name, why it was chosen, and the load function.
    """
    from monai.transforms import LoadImage

    if importlib.util.find_spec("itk") is not None:
        reader, why = "ITKReader", "the itk package is installed"
    else:
        reader = "PydicomReader"
        why = (
            "MONAI's ITKReader needs the `itk` package, which is not installed "
            "(installing it was out of scope), so MONAI's PydicomReader is used"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transform = LoadImage(image_only=True, reader=reader)

    def load(folder: Path) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(transform(str(folder)))

    return reader, why, load


def same_voxels(medvol_xyz: np.ndarray, sitk_zyx: np.ndarray, monai_xyz: np.ndarray) -> dict[str, Any]:
    """Do the three readers decode the same values? (MONAI may stack z reversed.)"""
    sitk_xyz = sitk_zyx.transpose(2, 1, 0)
    monai_vs_medvol = "different"
    if monai_xyz.shape == medvol_xyz.shape:
        if np.array_equal(monai_xyz, medvol_xyz):
            monai_vs_medvol = "identical"
        elif np.array_equal(monai_xyz[:, :, ::-1], medvol_xyz):
            monai_vs_medvol = "identical after reversing slice order"
    return {
        "medvol_shape_xyz": list(medvol_xyz.shape),
        "medvol_dtype": str(medvol_xyz.dtype),
        "sitk_dtype": str(sitk_zyx.dtype),
        "monai_dtype": str(monai_xyz.dtype),
        "medvol_equals_sitk": bool(np.array_equal(medvol_xyz, sitk_xyz)),
        "monai_vs_medvol": monai_vs_medvol,
    }


def load_case(folder: Path, repeats: int, description: str) -> dict[str, Any]:
    """Time medvol.load, SimpleITK alone (baseline) and MONAI LoadImage on one folder."""
    monai_reader, monai_why, load_monai = monai_loader()
    calls: dict[str, Callable[[], object]] = {
        "sitk_image_series_reader": lambda: load_sitk(folder),
        "medvol_load": lambda: load_medvol(folder),
        "monai_load_image": lambda: load_monai(folder),
        "medvol_scan_folder_only": lambda: medvol_dicom.scan_folder(folder),
    }
    log(f"{description}: {repeats} repeats")
    times = time_calls(calls, repeats)
    return {
        "description": description,
        "folder": str(folder),
        "files": len(list_files(folder)),
        "baseline": "sitk_image_series_reader",
        "monai_reader": monai_reader,
        "monai_reader_why": monai_why,
        "note": "medvol_scan_folder_only is the header-scan part of medvol_load, for the breakdown",
        "results": summarize(times, "sitk_image_series_reader"),
        "check": same_voxels(load_medvol(folder), load_sitk(folder), load_monai(folder)),
    }


def nifti_case(path: Path, repeats: int) -> dict[str, Any]:
    """Time medvol.load, nibabel alone (baseline) and MONAI LoadImage on one NIfTI file."""
    import nibabel as nib
    from monai.transforms import LoadImage

    transform = LoadImage(image_only=True)  # NibabelReader for .nii.gz
    calls: dict[str, Callable[[], object]] = {
        "nibabel": lambda: np.asanyarray(nib.load(path).dataobj),
        "medvol_load": lambda: medvol.load(path).array,
        "monai_load_image": lambda: np.asarray(transform(str(path))),
    }
    log(f"NIfTI {path.name}: {repeats} repeats")
    times = time_calls(calls, repeats)
    return {
        "description": f"real CT NIfTI {path.name}, shape {list(nib.load(path).shape)}, gzip",
        "baseline": "nibabel",
        "results": summarize(times, "nibabel"),
    }


# ---------------------------------------------------------------------- scanning


def scan_pydicom_loop(folder: Path) -> dict[str, list[str]]:
    """Baseline: read every header sequentially and group by SeriesInstanceUID."""
    groups: dict[str, list[str]] = {}
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        groups.setdefault(str(ds.SeriesInstanceUID), []).append(str(path))
    return groups


def scan_medvol_one_process(folder: Path) -> list[medvol_dicom.DicomSeries]:
    """medvol's own header reader without the process pool (to show the parallel gain)."""
    headers = medvol_dicom.scan_headers(list_files(folder), workers=1)
    return medvol_dicom.group_series(h for h in headers if isinstance(h, medvol_dicom.SliceHeader))


def scan_case(folder: Path, files: int, series: int, repeats: int) -> dict[str, Any]:
    """Time series discovery in a flat folder of many small DICOM files."""
    calls: dict[str, Callable[[], object]] = {
        "pydicom_sequential_loop": lambda: scan_pydicom_loop(folder),
        "medvol_scan_folder": lambda: medvol_dicom.scan_folder(folder),
        "medvol_scan_one_process": lambda: scan_medvol_one_process(folder),
        "sitk_gdcm_series_ids": lambda: sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)),
    }
    log(f"scan of {files} files in {series} series: {repeats} repeats")
    times = time_calls(calls, repeats)
    found = {
        "medvol_scan_folder": len(medvol_dicom.scan_folder(folder)[0]),
        "pydicom_sequential_loop": len(scan_pydicom_loop(folder)),
        "sitk_gdcm_series_ids": len(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))),
    }
    return {
        "description": f"{files} files ({series} series x {files // series} slices of 8x8), flat folder",
        "files": files,
        "series_expected": series,
        "series_found": found,
        "baseline": "pydicom_sequential_loop",
        "cpu_count": os.cpu_count(),
        "parallel_min_files": medvol_dicom.PARALLEL_SCAN_MIN_FILES,
        "results": summarize(times, "pydicom_sequential_loop"),
        "parallelism": cpu_split(lambda: medvol_dicom.scan_folder(folder)),
    }


def cpu_split(call: Callable[[], object]) -> dict[str, float]:
    """Wall time and CPU time spent in this process vs in (reaped) child processes."""
    before_self = resource.getrusage(resource.RUSAGE_SELF)
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    call()
    wall = time.perf_counter() - start
    after_self = resource.getrusage(resource.RUSAGE_SELF)
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)

    def cpu(after: resource.struct_rusage, before: resource.struct_rusage) -> float:
        return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime

    children = cpu(after_children, before_children)
    return {
        "wall_s": round(wall, 4),
        "cpu_in_this_process_s": round(cpu(after_self, before_self), 4),
        "cpu_in_worker_processes_s": round(children, 4),
        "worker_cpu_per_wall_second": round(children / wall, 2),
    }


def no_pixel_case(root: Path, sizes: Sizes) -> dict[str, Any]:
    """Same headers, tiny vs huge pixel data: scan time and bytes read per file."""
    count, matrix = sizes.no_pixel_files, sizes.no_pixel_matrix
    tiny = root / "tiny"
    huge = root / "huge"
    write_series(tiny, SeriesSpec("tiny", 1, 8, 8, count))
    write_series(huge, SeriesSpec("huge", 1, matrix, matrix, count), sparse_pixels=True)
    pixel_bytes = matrix * matrix * 2
    log(f"no-pixel check: {count} files with 128 B vs {pixel_bytes // MiB} MiB of pixel data")
    times = time_calls(
        {
            "scan_folder_tiny_pixels": lambda: medvol_dicom.scan_folder(tiny),
            "scan_folder_huge_pixels": lambda: medvol_dicom.scan_folder(huge),
        },
        sizes.repeats,
    )

    def bytes_per_file(call: Callable[[], object], files: int) -> int | None:
        before = bytes_read_so_far()
        call()
        after = bytes_read_so_far()
        return None if before is None or after is None else round((after - before) / files)

    huge_files = sorted(huge.iterdir())[:5]
    return {
        "description": (
            f"{count} files each, 8x8 pixels vs {matrix}x{matrix} int16 pixels "
            f"({pixel_bytes // MiB} MiB per file, sparse on disk)"
        ),
        "baseline": "scan_folder_tiny_pixels",
        "results": summarize(times, "scan_folder_tiny_pixels"),
        "pixel_bytes_per_huge_file": pixel_bytes,
        "bytes_read_per_file": {
            "how": "rchar from /proc/self/io around one call; includes the reaped pool workers",
            "medvol_scan_folder_tiny": bytes_per_file(lambda: medvol_dicom.scan_folder(tiny), count),
            "medvol_scan_folder_huge": bytes_per_file(lambda: medvol_dicom.scan_folder(huge), count),
            "pydicom_full_read_huge_for_contrast": bytes_per_file(
                lambda: [pydicom.dcmread(path).PixelData for path in huge_files], len(huge_files)
            ),
        },
    }


# ------------------------------------------------------------------- peak memory

PEAK_CHILD_READERS: dict[str, Callable[[Path], object]] = {
    "sitk_image_series_reader": load_sitk,
    "medvol_load": load_medvol,
}


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it restarts at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_child(reader: str, folder: Path) -> None:
    """In a fresh process: load once and print peak RSS growth (MiB) as JSON."""
    load = monai_loader()[2] if reader == "monai_load_image" else PEAK_CHILD_READERS[reader]
    before = peak_rss_mib()
    array = load(folder)
    growth_mib = round(peak_rss_mib() - before, 1)
    print(json.dumps({"peak_rss_growth_mib": growth_mib, "array_mib": round(array.nbytes / MiB, 1)}))


def peak_memory(folder: Path) -> dict[str, Any]:
    """Peak RSS growth of one load per reader, each in a fresh Python process."""
    out: dict[str, Any] = {
        "how": "VmHWM of a fresh process after one load minus before it (imports done); "
        "medvol's pool workers are not counted (300 files use the pool for the header scan)",
    }
    for reader in ("sitk_image_series_reader", "medvol_load", "monai_load_image"):
        command = [sys.executable, __file__, "--peak-child", reader, str(folder)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        out[reader] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# ------------------------------------------------------------------------- goals


def goals(cases: dict[str, Any]) -> dict[str, Any]:
    """Read the issue's goals off the measured ratios."""
    out: dict[str, Any] = {}
    for name in ("real_ct_jpeg2000", "synthetic_ct_series"):
        case = cases.get(name, {})
        if "results" not in case:
            continue
        medvol_ratio = case["results"]["medvol_load"]["ratio_to_baseline"]
        monai_ratio = case["results"]["monai_load_image"]["ratio_to_baseline"]
        out[f"{name}: medvol.load within 1.2x of SimpleITK"] = {
            "ratio": medvol_ratio,
            "met": medvol_ratio <= 1.2,
        }
        out[f"{name}: medvol.load faster than MONAI LoadImage"] = {
            "medvol_over_monai": round(medvol_ratio / monai_ratio, 3),
            "met": medvol_ratio < monai_ratio,
        }
    scan = cases["scan_many_files"]["results"]
    parallel = cases["scan_many_files"]["parallelism"]["worker_cpu_per_wall_second"]
    own_speedup = scan["medvol_scan_one_process"]["median_s"] / scan["medvol_scan_folder"]["median_s"]
    out["header scan runs in parallel processes"] = {
        "worker_cpu_per_wall_second": parallel,
        "speedup_over_medvol_one_process": round(own_speedup, 2),
        "met": parallel > 1.0 and own_speedup > 1.0,
    }
    out["header scan faster than a sequential pydicom loop (not an issue goal; context)"] = {
        "ratio": scan["medvol_scan_folder"]["ratio_to_baseline"],
        "met": scan["medvol_scan_folder"]["ratio_to_baseline"] < 1.0,
    }
    no_pixels = cases["scan_reads_no_pixels"]
    read = no_pixels["bytes_read_per_file"]["medvol_scan_folder_huge"]
    growth = no_pixels["results"]["scan_folder_huge_pixels"]["ratio_to_baseline"]
    out["header scan reads no pixel data"] = {
        "bytes_read_per_huge_file": read,
        "pixel_bytes_per_huge_file": no_pixels["pixel_bytes_per_huge_file"],
        "time_huge_over_tiny": growth,
        "met": read is not None and read < 64 * 1024 and growth < 1.5,
    }
    return out


# -------------------------------------------------------------------------- main


def skipped(path: Path) -> dict[str, str]:
    """The entry for a real-data case whose input is missing (and say so on stderr)."""
    message = f"skipped: {path} not found (the shared real data is missing; pass --data DIR)"
    log(message)
    return {"skipped": message}


def run(sizes: Sizes, data: Path) -> dict[str, Any]:
    """Every case, in order; synthetic data lives in a temporary folder."""
    cases: dict[str, Any] = {}
    real, nifti = data / REAL_SERIES, data / REAL_NIFTI
    if real.is_dir():
        description = "real CT, 20 slices 512x512, JPEG 2000 lossless"
        cases["real_ct_jpeg2000"] = load_case(real, max(sizes.repeats, 3), description)
    else:
        cases["real_ct_jpeg2000"] = skipped(real)
    if nifti.is_file():
        cases["real_nifti_ct"] = nifti_case(nifti, max(sizes.repeats, 3))
    else:
        cases["real_nifti_ct"] = skipped(nifti)
    with tempfile.TemporaryDirectory(prefix="medvol-bench-") as tmp:
        root = Path(tmp)
        spec = SeriesSpec("ct", 1, sizes.series_matrix, sizes.series_matrix, sizes.series_slices)
        log(f"writing {spec.slices} slices of {spec.rows}x{spec.columns} int16")
        write_series(root / "series", spec)
        description = (
            f"synthetic CT, {spec.slices} slices {spec.rows}x{spec.columns} int16 (BitsStored 16), "
            "Explicit VR Little Endian, RescaleIntercept -1024"
        )
        cases["synthetic_ct_series"] = load_case(root / "series", sizes.repeats, description)
        if sizes.peak_memory:
            log("peak memory, one fresh process per reader")
            cases["synthetic_ct_series"]["peak_memory"] = peak_memory(root / "series")

        scan_folder = root / "scan"
        files = sizes.scan_series * sizes.scan_slices_per_series
        log(f"writing {files} small files")
        for number in range(sizes.scan_series):
            spec = SeriesSpec(f"s{number:03d}", number + 1, 8, 8, sizes.scan_slices_per_series)
            write_series(scan_folder, spec)
        cases["scan_many_files"] = scan_case(scan_folder, files, sizes.scan_series, sizes.repeats)
        cases["scan_reads_no_pixels"] = no_pixel_case(root / "nopixels", sizes)
    return {"cases": cases, "goals": goals(cases)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, small sizes (smoke test)")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"default {DEFAULT_DATA}")
    parser.add_argument("--repeats", type=int, help="override the number of timed repeats")
    parser.add_argument("--peak-child", nargs=2, metavar=("READER", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak_child:
        peak_child(args.peak_child[0], Path(args.peak_child[1]))
        return 0
    sizes = QUICK if args.quick else FULL
    if args.repeats:
        sizes = Sizes(**{**sizes.__dict__, "repeats": args.repeats})
    started = time.perf_counter()
    machine = environment()
    with stdout_to_stderr():
        report = run(sizes, args.data)
    finish_report(
        {
            "quick": args.quick,
            "sizes": sizes.__dict__,
            "timing": "wall-clock median of warm-cache repeats after one warm-up; calls interleaved",
            "environment": machine,
            **report,
        },
        started,
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
