"""Checkpoints: everything a run needs to continue as if it had never stopped.

A checkpoint holds the model, optimiser and scheduler states, the epoch, the
RNG states of every generator (Python, NumPy, torch CPU and CUDA), the best
validation metric so far and the early-stopping counter, the resolved config,
the fitted normaliser and medvol's version. It is written atomically (a
temporary file, then a rename) and read with ``torch.load(weights_only=True)``,
so a checkpoint file from elsewhere is data, never code.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvol.errors import MedvolError
from medvol.io.atomic import atomic_path


def capture_rng() -> dict[str, Any]:
    """The state of every random generator, as tensors and plain values."""
    state, key, position, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": state,
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Undo ``capture_rng``: every generator continues where it was."""
    random.setstate(_as_tuples(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["key"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """Python's RNG state must be nested tuples; a reload may give lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write a checkpoint atomically."""
    path = Path(path)
    with atomic_path(path) as temporary:
        torch.save(state, temporary)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint as data only (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise MedvolError(path, "no checkpoint here")
    try:
        state: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise MedvolError(path, _refusal(error)) from error
    except Exception as error:  # torch raises several types for corrupt files
        raise MedvolError(path, f"cannot read the checkpoint ({_first_line(error)})") from error
    return state


def _refusal(error: pickle.UnpicklingError) -> str:
    """Why a checkpoint was refused, without torch's advice to unpickle it anyway.

    medvol reads tensors, numbers, strings and containers only; anything else in
    a pickle could run code when loaded, so it is refused and never retried.
    """
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    what = f"a Python object of type {found[1]}" if found else "content that is not tensors or plain values"
    return (
        f"refused: the checkpoint holds {what}; medvol loads checkpoints as data only (tensors, numbers, "
        "strings, lists, dicts), because unpickling anything else can run code from the file. Use a "
        "checkpoint written by `medvol train`"
    )


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
