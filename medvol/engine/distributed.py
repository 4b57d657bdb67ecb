"""One process or many: the device and the torch.distributed process group.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; when they are
present medvol joins the process group (NCCL on CUDA, gloo on CPU) and each
rank takes its share of the data. Without them it is rank 0 of 1 and nothing
distributed is touched. ``medvol.engine.launch.launch_environment`` is the one
place that reads them; medvol reads no other environment variables.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from medvol.engine.launch import launch_environment
from medvol.errors import MedvolError

_joined_process_group = False  # set by ``start``; read by ``end_process_if_joined``


@dataclass(frozen=True)
class Runtime:
    """Where this process runs and which share of the work is its own."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main rank writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def choose_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """CUDA (this rank's GPU), then Apple MPS, then CPU; or what the user asked for."""
    if preference == "auto":
        if torch.cuda.is_available():
            preference = "cuda"
        elif torch.backends.mps.is_available():
            preference = "mps"
        else:
            preference = "cpu"
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but CUDA is not available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(preference)


def start(preference: str = "auto") -> Runtime:
    """Join the torchrun process group if launched by torchrun; pick the device."""
    launch = launch_environment()
    device = choose_device(preference, launch.local_rank)
    if launch.world_size > 1 and not dist.is_initialized():
        global _joined_process_group
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        _joined_process_group = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Runtime(device=device, rank=rank, world_size=launch.world_size, local_rank=launch.local_rank)


def stop(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def end_process_if_joined(code: int) -> None:
    """End this process now with exit status ``code`` if it joined a process group; else return.

    Once ``DistributedDataParallel`` has used it, torch keeps the process group and
    its gloo threads alive after ``destroy_process_group``. Their teardown during
    interpreter shutdown sometimes aborts the process ("terminate called without an
    active exception", SIGABRT; 1 of 24 two-process runs on a loaded 2-core machine)
    after every file of the run was written, and torchrun then reports the job failed. So
    the process flushes its logs and output and ends without interpreter shutdown;
    medvol registers no exit handlers that would be skipped.
    """
    if not _joined_process_group:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def gather_objects(runtime: Runtime, items: list[Any]) -> list[Any]:
    """Every rank's list, concatenated in rank order, on every rank."""
    if not runtime.distributed:
        return list(items)
    gathered: list[list[Any] | None] = [None] * runtime.world_size
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in (part or [])]


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def broadcast_flag(runtime: Runtime, flag: bool) -> bool:
    """Rank 0's decision (e.g. early stop), on every rank."""
    if not runtime.distributed:
        return flag
    value = [flag]
    dist.broadcast_object_list(value, src=0)
    return bool(value[0])


def lost_peer(runtime: Runtime, error: BaseException) -> MedvolError | None:
    """The clear error for a collective that failed because another process of the job went away.

    gloo and NCCL raise ``RuntimeError`` (``torch.distributed.DistError``) when a peer
    dies or its node is lost; the others must then stop too, and every node resumes
    from the last checkpoint. None for any other error (it is not a lost peer).
    """
    text = str(error)
    if not runtime.distributed or not (
        isinstance(error, dist.DistError) or "gloo" in text or "NCCL" in text or "Connection closed" in text
    ):
        return None
    reason = re.sub(r"^\[[^\]]*\]\s*", "", text.strip()).split(". ")[0].splitlines()[0]
    return MedvolError(
        None,
        f"rank {runtime.rank} of {runtime.world_size}: another process of this torchrun job stopped "
        f"({reason}); rerun the same command with --resume on every node to continue from the last "
        "checkpoint",
    )
