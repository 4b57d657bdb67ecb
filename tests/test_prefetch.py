"""Reading the next batches in a background thread (``data.prefetch``, ``medvol.data.prefetch``).

What a user relies on: the same batches in the same order as without the
thread (so a run trains to the same weights), errors from the data raised where
the user sees them, and no thread left reading after an epoch ends, fails or is
interrupted.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from medvol import demo
from medvol.config import parse_config
from medvol.data.prefetch import THREAD_NAME, Prefetcher
from medvol.engine import train as train_module
from medvol.errors import MedvolError


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


@pytest.fixture(autouse=True)
def no_thread_left() -> Any:
    yield
    assert not prefetch_threads(), "a prefetch thread is still running after the test"


class Draws(Dataset[dict[str, Any]]):
    """Each item draws from torch's global RNG; the ``fail_at``-th item read fails; reads can be slow."""

    def __init__(self, size: int = 24, fail_at: int | None = None, seconds: float = 0.0) -> None:
        self.size, self.fail_at, self.seconds, self.reads = size, fail_at, seconds, 0

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        time.sleep(self.seconds)
        self.reads += 1
        if self.reads == self.fail_at:
            raise MedvolError(Path("case_9.nii.gz"), "label grid differs from the image grid")
        return {"index": torch.tensor(index), "noise": torch.rand(3)}


def loader_for(
    dataset: Dataset[dict[str, Any]], rank: int = 1
) -> tuple[DataLoader[Any], DistributedSampler[Any]]:
    sampler: DistributedSampler[Any] = DistributedSampler(dataset, num_replicas=2, rank=rank, seed=3)
    return DataLoader(dataset, batch_size=4, sampler=sampler, drop_last=True), sampler


def epoch_batches(
    loader: DataLoader[Any], sampler: DistributedSampler[Any], epoch: int, prefetch: bool
) -> list[Any]:
    sampler.set_epoch(epoch)
    torch.manual_seed(epoch)
    if not prefetch:
        return list(loader)
    with Prefetcher(loader, depth=2) as batches:
        assert len(batches) == len(loader)
        return list(batches)


def test_the_same_batches_in_the_same_order_with_a_ddp_sampler() -> None:
    loader, sampler = loader_for(Draws())
    for epoch in (0, 1):
        plain = epoch_batches(loader, sampler, epoch, prefetch=False)
        read_ahead = epoch_batches(loader, sampler, epoch, prefetch=True)
        assert len(read_ahead) == len(plain) == 3
        for a, b in zip(plain, read_ahead, strict=True):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["noise"], b["noise"])
    first = torch.cat([b["index"] for b in epoch_batches(loader, sampler, 0, prefetch=True)])
    second = torch.cat([b["index"] for b in epoch_batches(loader, sampler, 1, prefetch=True)])
    assert not torch.equal(first, second), "set_epoch must reshuffle"
    other_loader, other_sampler = loader_for(Draws(), rank=0)
    other = torch.cat([b["index"] for b in epoch_batches(other_loader, other_sampler, 1, prefetch=True)])
    assert sorted(second.tolist() + other.tolist()) == list(range(24))  # the two ranks' shares, each once


def test_an_error_while_reading_is_raised_in_the_training_loop() -> None:
    loader, sampler = loader_for(Draws(fail_at=9))
    sampler.set_epoch(0)
    seen = 0
    with (
        pytest.raises(MedvolError, match=r"case_9\.nii\.gz.*label grid differs"),
        Prefetcher(loader) as batches,
    ):
        for _ in batches:
            seen += 1
    assert seen < len(loader)


@pytest.mark.parametrize("how", ["break", "exception", "keyboard interrupt"])
def test_leaving_an_epoch_early_stops_the_thread(how: str) -> None:
    loader, sampler = loader_for(Draws(size=64, seconds=0.01))
    sampler.set_epoch(0)
    errors = {"exception": RuntimeError("out of memory"), "keyboard interrupt": KeyboardInterrupt()}
    try:
        with Prefetcher(loader, depth=1) as batches:
            for step, _ in enumerate(batches):
                time.sleep(0.05)  # the thread reads ahead meanwhile, then waits for room in the queue
                if step == 2:
                    if how == "break":
                        break
                    raise errors[how]
    except (RuntimeError, KeyboardInterrupt) as error:
        assert error is errors[how]
    assert not prefetch_threads()


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth must be at least 1"):
        Prefetcher([1, 2, 3], depth=0)


# -- in the trainer ---------------------------------------------------------------------------------


def segmenter_config(out: Path, name: str, prefetch: bool, where: str, batch_size: int = 2) -> dict[str, Any]:
    """The bundled hippocampus cases, a tiny UNet, no workers, 2 epochs, fp32: exact numbers."""
    config = demo.hippocampus_segmenter(
        demo.sample("hippocampus") / "train", epochs=2, output_dir=out, name=name, batch_size=batch_size
    )
    config["data"].update(num_workers=0, prefetch=prefetch, cache_dir=str(out / "cache"))
    config["augment"] = {"affine_prob": 0.5, "noise_prob": 0.3, "gamma_prob": 0.3, "where": where}
    config["train"].update(amp="none", channels_last=False, val_every=2)
    return config


@pytest.mark.parametrize("where", ["sample", "batch"])
def test_prefetch_trains_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Random patches and (with ``where: sample``) the per-sample augmenter run in the thread."""
    started: list[Prefetcher[Any]] = []

    class Counted(Prefetcher[Any]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(train_module, "Prefetcher", Counted)
    runs = {}
    for prefetch in (False, True):
        config = parse_config(segmenter_config(tmp_path, f"prefetch-{prefetch}", prefetch, where))
        runs[prefetch] = train_module.train(config)
    assert len(started) == 2  # one per epoch, only with prefetch on
    plain, read_ahead = (
        torch.load(runs[p] / "checkpoints" / "last.pt", weights_only=True) for p in (False, True)
    )
    for name, tensor in plain["model"].items():
        torch.testing.assert_close(read_ahead["model"][name], tensor, rtol=0, atol=0, msg=name)
    assert [r["train_loss"] for r in plain["progress"]["history"]] == [
        r["train_loss"] for r in read_ahead["progress"]["history"]
    ]


def test_an_interrupted_epoch_leaves_no_thread_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the middle of an epoch: the run stops, the thread with it."""
    real = train_module.create_loss

    class InterruptedLoss(nn.Module):
        def __init__(self, loss: nn.Module) -> None:
            super().__init__()
            self.loss, self.calls = loss, 0

        def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 2:  # 2 batches used, 2 queued, 1 being read: 5 of the epoch's 9
                assert prefetch_threads(), "the epoch should be reading ahead"
                raise KeyboardInterrupt
            result: torch.Tensor = self.loss(outputs, targets)
            return result

    monkeypatch.setattr(train_module, "create_loss", lambda *a, **k: InterruptedLoss(real(*a, **k)))
    config = parse_config(segmenter_config(tmp_path, "interrupted", True, "batch", batch_size=1))
    with pytest.raises(KeyboardInterrupt):
        train_module.train(config)
    assert not prefetch_threads()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_come_pinned_on_cuda() -> None:
    """The thread pins each batch (the DataLoader's ``pin_memory``), so copies to the GPU can overlap."""
    loader = DataLoader(Draws(size=8), batch_size=4, pin_memory=True)
    with Prefetcher(loader, device=torch.device("cuda")) as batches:
        assert all(batch["noise"].is_pinned() for batch in batches)
