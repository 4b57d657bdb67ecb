"""Datasets: case discovery, validation, manifests and splits."""

from medvol.data.cases import Case, Finding, IndexReport, discover, validate, write_manifest
from medvol.data.splits import grouped_folds, load_folds, nnunet_folds, save_folds

__all__ = [
    "Case",
    "Finding",
    "IndexReport",
    "discover",
    "grouped_folds",
    "load_folds",
    "nnunet_folds",
    "save_folds",
    "validate",
    "write_manifest",
]
