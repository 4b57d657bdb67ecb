"""This process's place in a ``torchrun`` launch, read from the environment without torch.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`launch_environment` is the one place that reads them (training joins
the process group with them, ``medvol.engine.distributed``; ``medvol predict``
shares the scans by them, ``medvol.prediction.sharding``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

from medvol.errors import MedvolError


class Launch(NamedTuple):
    """This process's place in a torchrun launch (rank 0 of 1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1


def launch_environment(environ: Mapping[str, str] | None = None) -> Launch:
    """``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` as torchrun sets them, checked.

    A variable that is unset or empty takes its single-process value (0, 0, 1).

    Args:
        environ: the environment to read (default ``os.environ``).

    Raises:
        MedvolError: a value is not an integer, ``WORLD_SIZE`` is below 1, or
            ``RANK`` or ``LOCAL_RANK`` is not a rank of ``WORLD_SIZE``.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, int] = {}
    for name, default in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)):
        text = environ.get(name, "").strip()
        try:
            values[name] = int(text) if text else default
        except ValueError:
            raise MedvolError(
                None, f"environment variable {name}={text!r} is not an integer (torchrun sets it)"
            ) from None
    launch = Launch(values["RANK"], values["LOCAL_RANK"], values["WORLD_SIZE"])
    if launch.world_size < 1:
        raise MedvolError(None, f"environment variable WORLD_SIZE={launch.world_size} must be at least 1")
    for name, rank in (("RANK", launch.rank), ("LOCAL_RANK", launch.local_rank)):
        if not 0 <= rank < launch.world_size:
            raise MedvolError(
                None,
                f"environment variable {name}={rank} is not a rank of WORLD_SIZE={launch.world_size} "
                f"(ranks are 0 to {launch.world_size - 1})",
            )
    return launch
