"""A model package: the one place that knows what ``medvol export`` writes and how it is checked.

::

    PACKAGE/
      model.json      the spec (FORMAT_VERSION): task, classes, input, preprocessing,
                      normaliser, sliding windows, the network file's SHA-256, provenance
      model.onnx      the network: images (B, C, X, Y, Z) float32 → logits
                      (fp32, or int8 QDQ with --int8: model.precision, model.quantization)
      config.yaml     the run's resolved config, read back with the typed loader
      MODEL_CARD.md   the run's model card (``medvol report``'s)

``read_spec`` refuses a package it cannot trust, each time with one line
naming the file: a missing file, a spec from a newer medvol, a network whose
SHA-256 is not the one recorded.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvol.errors import MedvolError
from medvol.io.atomic import file_sha256

if TYPE_CHECKING:
    from medvol.config import ExperimentConfig

FORMAT = "medvol-model-package"
FORMAT_VERSION = 1
"""Raised when a reader of an older version could not read what is written."""


class PackageFolder:
    """A model package's files by name (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.spec = self.path / "model.json"
        self.network = self.path / "model.onnx"
        self.config = self.path / "config.yaml"
        self.card = self.path / "MODEL_CARD.md"

    @property
    def files(self) -> list[Path]:
        """The files a whole package holds."""
        return [self.spec, self.network, self.config, self.card]


def is_package(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a package spec (``model.json``)."""
    return PackageFolder(path).spec.is_file()


def read_spec(path: str | Path) -> dict[str, Any]:
    """The spec of the package in ``path``, after checking the package is whole and unchanged.

    Raises:
        MedvolError: no such folder, not a package, written by a newer medvol
            (format version), a file missing, or ``model.onnx`` not the file
            the spec's SHA-256 names.
    """
    package = PackageFolder(path)
    if not package.path.is_dir():
        raise MedvolError(package.path, "model package not found (write one with `medvol export`)")
    spec = _read_json(package.spec)
    if spec.get("format") != FORMAT:
        raise MedvolError(package.spec, f'not a medvol model package spec (no "format": "{FORMAT}")')
    version = spec.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise MedvolError(package.spec, f"format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        from medvol.version import __version__

        raise MedvolError(
            package.spec,
            f"package format {version} (written by medvol {spec.get('medvol_version', '?')}); "
            f"medvol {__version__} reads format {FORMAT_VERSION} and older: upgrade medvol",
        )
    for file in package.files[1:]:
        if not file.is_file():
            raise MedvolError(file, "missing: the model package is incomplete (export the run again)")
    recorded = str((spec.get("model") or {}).get("sha256", ""))
    actual = file_sha256(package.network)
    if actual != recorded:
        raise MedvolError(
            package.network,
            f"SHA-256 {actual[:16]}… differs from {recorded[:16] or 'none'}… recorded in model.json: "
            "the network was changed or damaged since export (export the run again)",
        )
    return spec


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise MedvolError(path.parent, "not a medvol model package: model.json is missing") from error
    except (OSError, ValueError) as error:
        raise MedvolError(path, f"cannot read the package spec ({error})") from error
    if not isinstance(data, dict):
        raise MedvolError(path, "expected a JSON object")
    return data


def preprocess_record(config: ExperimentConfig) -> dict[str, Any]:
    """Every field of the run's ``preprocess`` (``medvol.transforms.PreprocessConfig``) as JSON values:
    the spec's ``preprocess``, which must equal the package's ``config.yaml``."""
    record: dict[str, Any] = json.loads(json.dumps(asdict(config.preprocess)))
    return record
