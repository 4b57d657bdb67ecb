"""Datasets: case discovery, validation and manifests."""

from medvol.data.cases import Case, Finding, IndexReport, discover, validate, write_manifest

__all__ = ["Case", "Finding", "IndexReport", "discover", "validate", "write_manifest"]
