"""The JSON sidecar beside a converted scan (``scan.nii.gz`` → ``scan.json``).

A NIfTI, NRRD or MetaImage file keeps the voxels and the geometry of a DICOM
series, but not the header facts medvol uses after conversion: the modality
(``medvol plan`` chooses CT or MR normalisation by it), the patient position
and the image type. ``medvol.save`` writes them beside the file in a
BIDS-style sidecar, with dcm2niix's key names, and ``medvol.load`` reads them
back into ``Volume.meta``; a sidecar written by dcm2niix is read the same way.

Only these keys are written, none of which identifies a patient:

- ``Modality`` (``CT``, ``MR``, ...), ``PatientPosition`` (``HFS``, ``FFS``,
  ``HFDL``, ...), ``ImageType`` (e.g. ``["ORIGINAL", "PRIMARY", "AXIAL"]``),
  ``SeriesNumber`` (a small number within a study, to find the series again);
- ``EchoNumber`` and ``EchoTime`` (in seconds, as dcm2niix and BIDS write it;
  ``Volume.meta["echo_time"]`` is in milliseconds, as DICOM stores it), so each
  echo of a multi-echo series converted to its own file says which it is;
- ``ConversionSoftware`` (``medvol``) and ``ConversionSoftwareVersion``.

Left out on purpose: names, IDs, birth dates, accession numbers, UIDs (they
link the file back to the patient's records), dates and times, institution,
station and device serial number, and free text typed at the scanner
(SeriesDescription, ProtocolName), which DICOM's de-identification profile
(PS3.15 Annex E) removes because it may hold anything, names included.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from medvol.errors import MedvolError
from medvol.io.atomic import full_suffix, write_json
from medvol.logs import get_logger
from medvol.version import __version__

logger = get_logger(__name__)

SOFTWARE = "medvol"

SIDECAR_KEYS = {
    "modality": "Modality",
    "patient_position": "PatientPosition",
    "image_type": "ImageType",
    "series_number": "SeriesNumber",
    "echo_number": "EchoNumber",
    "echo_time": "EchoTime",
}
"""``Volume.meta`` key → sidecar key (dcm2niix's names)."""

DESCRIBING_KEYS = ("modality", "patient_position", "image_type")
"""The keys of which at least one must be known for a sidecar to be written."""


def sidecar_path(path: str | Path) -> Path:
    """``scan.nii.gz`` → ``scan.json`` (the format suffix replaced, as dcm2niix names it)."""
    path = Path(path)
    suffix = full_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(stem + ".json")


def sidecar_fields(meta: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's content for a volume's ``meta``; empty when it knows none of :data:`DESCRIBING_KEYS`."""
    if all(meta.get(key) in (None, "", []) for key in DESCRIBING_KEYS):
        return {}
    fields = {name: meta[key] for key, name in SIDECAR_KEYS.items() if meta.get(key) not in (None, "", [])}
    if "ImageType" in fields:
        fields["ImageType"] = [str(value) for value in fields["ImageType"]]
    if "EchoNumber" in fields:
        fields["EchoNumber"] = int(fields["EchoNumber"])
    if "EchoTime" in fields:
        fields["EchoTime"] = round(float(fields["EchoTime"]) / 1000, 9)  # ms → s
    return {**fields, "ConversionSoftware": SOFTWARE, "ConversionSoftwareVersion": __version__}


def written_by_medvol(path: Path) -> bool:
    """Whether ``path`` is a sidecar medvol wrote (its ``ConversionSoftware`` is medvol)."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and content.get("ConversionSoftware") == SOFTWARE


def write_sidecar(meta: dict[str, Any], image_path: Path) -> Path | None:
    """Write the sidecar of the image at ``image_path`` atomically; returns its path.

    When ``meta`` has nothing to say, no sidecar is written, and one that
    medvol wrote earlier for a file of that name is removed (it describes the
    file being replaced); a sidecar from another program is left alone.
    """
    path = sidecar_path(image_path)
    if path.is_dir():
        raise MedvolError(path, f"is a folder, where the JSON sidecar of {image_path.name} belongs")
    fields = sidecar_fields(meta)
    if not fields:
        if path.is_file() and written_by_medvol(path):
            path.unlink()
        return None
    return write_json(path, fields, allow_nan=False)


def read_sidecar(image_path: Path) -> dict[str, Any]:
    """The ``Volume.meta`` entries the sidecar beside ``image_path`` holds (none without one).

    Only :data:`SIDECAR_KEYS` are used, and ``sidecar`` names the file read;
    other keys (dcm2niix writes many) are ignored. A sidecar that is not a
    JSON object, or a value of the wrong type, is named in a warning and
    not used; the image still loads.
    """
    path = sidecar_path(image_path)
    if not path.is_file():
        return {}
    try:
        content = parse_json(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        logger.warning("%s: not a readable JSON sidecar (%s); its modality is not used", path, error)
        return {}
    if not isinstance(content, dict):
        kind = type(content).__name__
        logger.warning("%s: a JSON sidecar must hold an object, found %s; not used", path, kind)
        return {}
    meta: dict[str, Any] = {"sidecar": str(path)}
    for key, name in SIDECAR_KEYS.items():
        if name not in content:
            continue
        value = content[name]
        if _valid(key, value):
            meta[key] = [str(v).strip() for v in value] if key == "image_type" else value
            if isinstance(meta[key], str):
                meta[key] = meta[key].strip()
            if key == "echo_time":
                meta[key] = round(value * 1000, 6)  # s → ms
        else:
            logger.warning("%s: %s %r is not %s; not used", path, name, value, _EXPECTED[key])
    return meta


_ESCAPE_BEFORE_LAST_QUOTE = re.compile(r'(?m)(?<!\\)((?:\\\\)*)\\"(,?)[ \t]*$')
"""A line's last quote preceded by an odd number of backslashes (an unescaped trailing backslash)."""


def parse_json(text: str) -> Any:
    """JSON, or dcm2niix's JSON with a value ending in an unescaped backslash.

    dcm2niix (v1.0.20260724, on the shared Siemens CT) writes the value
    ``Br38f\\`` as ``"Br38f\\",``, which escapes the closing quote; such a
    line is read as a value ending in a backslash. Control characters inside
    strings are accepted (``strict=False``). Anything else that is not JSON
    raises ``ValueError``.
    """
    try:
        return json.loads(text)
    except ValueError:
        return json.loads(_ESCAPE_BEFORE_LAST_QUOTE.sub(r'\1\\\\"\2', text), strict=False)


_EXPECTED = {
    "modality": "a text such as CT or MR",
    "patient_position": "a text such as HFS",
    "image_type": "a list of texts",
    "series_number": "a whole number",
    "echo_number": "a whole number",
    "echo_time": "a time in seconds",
}


def _valid(key: str, value: Any) -> bool:
    if key in ("modality", "patient_position"):
        return isinstance(value, str) and bool(value.strip())
    if key == "image_type":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if key == "echo_time":
        return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    return isinstance(value, int) and not isinstance(value, bool)
