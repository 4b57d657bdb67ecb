"""Model packages: a run's network as ONNX with everything needed to predict as ``medvol predict`` does.

``export_run(RUN, OUT)`` (``medvol export``) writes the package
(``medvol.export.package`` names its files and checks them);
``load_package(OUT)`` reads it back as a ``TrainedModel`` whose network ONNX
Runtime runs (``medvol.export.runtime``), so ``medvol predict OUT IN_DIR
OUT_DIR`` prepares, windows, maps back and writes exactly as for the run.
"""

from __future__ import annotations

from medvol.export.exporter import export_run, with_onnxruntime
from medvol.export.package import FORMAT_VERSION, PackageFolder, is_package, read_spec
from medvol.export.runtime import OnnxNetwork, load_package

__all__ = [
    "FORMAT_VERSION",
    "OnnxNetwork",
    "PackageFolder",
    "export_run",
    "is_package",
    "load_package",
    "read_spec",
    "with_onnxruntime",
]
