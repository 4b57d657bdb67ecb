"""medvol: 3D medical image classification and segmentation with correct geometry."""

from __future__ import annotations

__version__ = "0.1.0"

from medvol.errors import MedvolError
from medvol.io import load, save
from medvol.volume import Volume

__all__ = ["MedvolError", "Volume", "__version__", "load", "save"]
