"""What ``medvol predict`` is asked to do (``Options``) and what it did (``Outcome``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from medvol.prediction.discovery import Failure


@dataclass(frozen=True)
class Options:
    """What to compute and write (the CLI flags)."""

    checkpoint: Literal["best", "last"] = "best"
    flip_tta: bool = False
    volume: str | None = None  # which volume of DICOM series of several (a number, or "all" as channels)
    largest_component: bool = False
    probabilities: bool = False
    dicom_seg: bool = False
    overwrite: bool = False
    device: str = "auto"
    shard: tuple[int, int] = (0, 1)
    workers: int = 2
    progress: bool | None = None  # None: a bar on a terminal, periodic lines elsewhere; False: nothing
    torch_threads: int | None = None  # None: torch's own setting (OMP_NUM_THREADS, else every core)
    # what runs the network: "auto" is torch for a run folder, ONNX Runtime for a model package
    engine: Literal["auto", "torch", "onnxruntime"] = "auto"


@dataclass
class Outcome:
    """What one ``predict`` call did (this shard's share)."""

    scans: int
    predicted: int
    skipped: int
    failures: list[Failure] = field(default_factory=list)
    ignored: int = 0
    files: dict[str, Path] = field(default_factory=dict)
    elsewhere: list[str] = field(default_factory=list)
    """Inputs (relative paths) another live process was predicting into the same folder."""

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


class ClaimedElsewhere(Exception):
    """A scan another live ``medvol predict`` process is predicting into the same folder."""


class DoneElsewhere(Exception):
    """A scan another process finished after this one listed what to do."""
