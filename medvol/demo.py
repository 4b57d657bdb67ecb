"""``medvol demo``: the main job end to end on data shipped inside medvol.

For now: convert the bundled CT DICOM series to NIfTI, print its geometry,
and check that the written file reloads with the same geometry and voxels.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from medvol.cli import describe, format_summary
from medvol.io import load, save


def sample_ct_series() -> Path:
    """Folder of the bundled 20-slice CT series (JPEG 2000, see its README)."""
    return Path(str(resources.files("medvol.samples") / "ct_jpeg2000"))


def run(out: Path) -> int:
    """Run the demo, writing into ``out``; returns an exit code."""
    source = sample_ct_series()
    print(f"[1/2] loading the bundled CT DICOM series: {source}")
    volume = load(source)
    print(format_summary(describe(volume)))
    target = out / "sample_ct.nii.gz"
    save(volume, target)
    reloaded = load(target)
    same_geometry = np.allclose(reloaded.affine, volume.affine, atol=1e-4)
    same_voxels = np.array_equal(reloaded.array, volume.array)
    print(
        f"[2/2] wrote {target}: reloads with the same geometry: {same_geometry}, same voxels: {same_voxels}"
    )
    return 0 if same_geometry and same_voxels else 1
