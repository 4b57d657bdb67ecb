"""Loading and saving in threads around the model, one failing scan never stopping the rest."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

Item = TypeVar("Item")


def run_pipeline(
    scans: Sequence[Item],
    prepare: Callable[[Item], Any],
    compute: Callable[[list[Any]], list[Any]],
    finish: Callable[[Item, Any], None],
    *,
    batch_size: int = 1,
    workers: int = 2,
    on_failure: Callable[[Item, BaseException], None],
    on_done: Callable[[Item], None],
) -> None:
    """Run ``prepare`` (load) and ``finish`` (save) in threads around ``compute``.

    ``prepare(scan)`` runs in a pool of ``workers`` threads, a few scans ahead;
    ``compute`` gets batches of prepared items in this thread (the model);
    ``finish(scan, result)`` is queued to the same pool. An exception in any
    step of one scan goes to ``on_failure`` and the batch goes on; a failing
    batch is retried one scan at a time to find the culprit. ``on_done`` and
    ``on_failure`` are called from this thread only. About
    ``max(workers, batch_size) + batch_size + workers`` scans are held in
    memory at once (loaded ahead, in the model, being written).
    """
    prefetch = max(workers, batch_size) + batch_size
    pending = iter(scans)
    loads: deque[tuple[Item, Future[Any]]] = deque()
    saves: deque[tuple[Item, Future[None]]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medvol-predict")

    def fill() -> None:
        while len(loads) < prefetch:
            scan = next(pending, None)
            if scan is None:
                return
            loads.append((scan, pool.submit(prepare, scan)))

    def drain(limit: int) -> None:
        while len(saves) > limit:
            scan, future = saves.popleft()
            try:
                future.result()
            except Exception as error:
                on_failure(scan, error)
            else:
                on_done(scan)

    def run_batch(batch: list[tuple[Item, Any]]) -> None:
        try:
            results = compute([item for _, item in batch])
        except Exception as error:
            if len(batch) == 1:
                on_failure(batch[0][0], error)
                return
            for one in batch:
                run_batch([one])
            return
        for (scan, _), result in zip(batch, results, strict=True):
            saves.append((scan, pool.submit(finish, scan, result)))

    try:
        fill()
        while loads:
            batch: list[tuple[Item, Any]] = []
            while loads and len(batch) < batch_size:
                scan, future = loads.popleft()
                try:
                    batch.append((scan, future.result()))
                except Exception as error:
                    on_failure(scan, error)
                fill()
                if batch and loads and not loads[0][1].done():
                    break  # compute what is ready rather than wait for a full batch
            if batch:
                run_batch(batch)
            drain(workers)
        drain(0)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
