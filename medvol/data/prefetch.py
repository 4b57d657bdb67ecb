"""Reading the next training batches while the model computes (``data.prefetch``).

With ``data.num_workers: 0`` the DataLoader reads, crops and collates each
batch in the training process, between two steps, so the model waits for it.
``Prefetcher`` runs that loop in a background thread instead and keeps up to
``depth`` batches ready in a bounded queue. Reading memory-mapped cache entries,
numpy copies and torch's collation release the GIL, so the thread works while
the model's operators run. On CUDA the DataLoader pins each batch
(``pin_memory``) in that thread too, and the training loop copies it to the
GPU with ``non_blocking=True``.

The batches are the DataLoader's own, in its order: the loader's iterator is
created in the calling thread (it draws its base seed from torch's global RNG
there, as without prefetching), and only this one thread then calls the
dataset, so every random draw of the sampler, the patch sampler and the
per-sample augmenter happens in the same order as without the thread.
With DataLoader workers there is nothing to add: they already read ahead.

The batched augmentation (``augment.where: batch``) stays in the training
thread on every device: on a 2-core CPU, running it in this thread as well
made training slower (it competed with the model's operators for the cores;
``docs/benchmarks-training.md``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

import torch

T = TypeVar("T")

THREAD_NAME = "medvol-prefetch"
_END = object()  # the loader is exhausted


class _Failed:
    """An exception raised while reading, handed to the training thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher(Generic[T]):
    """Iterate over ``batches`` with the next ``depth`` items read ahead by a background thread.

    Use as a context manager (or call ``close``): leaving it early, by
    ``break``, an exception or ``KeyboardInterrupt``, stops and joins the thread.
    An exception raised while reading is raised again by ``next``.

    Args:
        batches: a DataLoader (or any iterable); its iterator is created here.
        depth: batches kept ready (the thread holds one more while it waits).
        device: the training device; on CUDA the thread uses it as its
            current device, so pinning creates no context on another GPU.
    """

    def __init__(
        self,
        batches: Iterable[T],
        depth: int = 2,
        device: torch.device | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._source = batches
        self._iterator = iter(batches)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._device = device
        self._thread = threading.Thread(target=self._read, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        return len(self._source)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        item = self._queue.get()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, _Failed):
            self.close()
            raise item.error
        return item

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading and wait for the thread to end (at most one batch's read)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _read(self) -> None:
        """The thread: read batches into the queue until the loader ends, fails, or ``close``."""
        try:
            if self._device is not None and self._device.type == "cuda":
                torch.cuda.set_device(self._device)
            for batch in self._iterator:
                if not self._put(batch):
                    return
            self._put(_END)
        except BaseException as error:  # handed to the training thread, raised there
            self._put(_Failed(error))

    def _put(self, item: object) -> bool:
        """Queue ``item``, waiting for room; ``False`` once ``close`` was called."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False
