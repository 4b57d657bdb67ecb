"""medvol: 3D medical image classification and segmentation with correct geometry.

The public API is imported lazily (PEP 562) so that ``medvol --help`` and
``import medvol.cli`` stay instant; ``medvol.load`` pulls in the readers on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from medvol.errors import MedvolError
    from medvol.io import load, save
    from medvol.volume import Volume

__all__ = ["MedvolError", "Volume", "__version__", "load", "save"]

_LAZY = {
    "MedvolError": "medvol.errors",
    "Volume": "medvol.volume",
    "load": "medvol.io",
    "save": "medvol.io",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medvol' has no attribute {name!r}")
