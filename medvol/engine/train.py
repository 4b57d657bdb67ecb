"""Training from a config: one code path for one CPU, one GPU, or many under torchrun.

``train(config)`` builds the data, model, loss, optimiser and schedule, then
for each epoch: trains on this rank's share of the training cases, validates
every ``val_every`` epochs on this rank's share of the validation cases (the
per-case results are gathered, so every case counts exactly once), keeps the
best checkpoint by the chosen metric, writes the last checkpoint atomically,
and stops early when the metric stops improving. Only rank 0 writes.

Resuming (``resume=True``) reloads the last checkpoint, including every RNG
state and the early-stopping counter; since the data order and augmentation
are reseeded from (seed, epoch), the resumed run continues exactly as the
uninterrupted one would have.

Precision: ``train.amp`` and ``train.channels_last`` are resolved for the
device and model (``medvol.engine.precision``; ``auto`` means bf16 autocast
where the hardware has native bf16, channels-last for the 3D ResNets), printed
at the start and recorded in ``environment.json`` and the checkpoints.

Messages (the precision line, one line per epoch, notes) are ``INFO`` records
of this module's logger; ``medvol.logs`` decides how they are shown.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from medvol.augment import worker_seed
from medvol.augment.batched import BatchAugmenter
from medvol.augment.mixing import BatchMixer
from medvol.config import ExperimentConfig, dump_config
from medvol.data.prefetch import Prefetcher
from medvol.engine import distributed
from medvol.engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from medvol.engine.distributed import Runtime
from medvol.engine.initial_weights import InitialWeights, load_initial_weights
from medvol.engine.precision import Precision, resolve_amp, resolve_precision
from medvol.engine.run_folder import RunFolder
from medvol.engine.run_start import check_resumed_config, flatten, prepare_run_folder
from medvol.engine.tracking import (
    MetricsLogger,
    environment,
    local_mlflow_uri,
    read_metrics,
    rewrite_metrics,
)
from medvol.engine.validation import validation_epoch
from medvol.errors import MedvolError
from medvol.logs import get_logger
from medvol.losses import create_loss
from medvol.models import create_model
from medvol.tasks import TaskData, task_for
from medvol.tasks.base import training_batch_augmenter, training_mixer

logger = get_logger(__name__)


@dataclass
class Progress:
    """What carries over from epoch to epoch (and through a resume)."""

    epoch: int = 0  # the next epoch to run
    best_metric: float | None = None
    best_epoch: int | None = None
    stale_validations: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def train(config: ExperimentConfig, resume: bool = False) -> Path:
    """Run (or resume) the experiment; returns its run folder."""
    runtime = distributed.start(config.train.device)
    try:
        return _train(config, runtime, resume)
    finally:
        distributed.stop(runtime)


def _train(config: ExperimentConfig, runtime: Runtime, resume: bool) -> Path:
    run = RunFolder(config.tracking.output_dir / config.tracking.name)
    run_dir = run.path
    resolve_amp(config.train.amp, runtime.device)  # refuse fp16 off CUDA before anything is written
    if runtime.is_main:
        prepare_run_folder(run, resume)
        if resume:
            check_resumed_config(run, config)
    distributed.barrier(runtime)
    torch.manual_seed(config.train.seed)
    np.random.seed(config.train.seed)

    task = task_for(config)
    data = task.build_data(runtime, run)
    model = create_model(config.model.name, **config.model.options)
    initial = None
    if config.model.init is not None and not resume:
        initial = load_initial_weights(model, config.model.init)
        if runtime.is_main:
            logger.info("%s", initial.describe())
    model = model.to(runtime.device)
    precision = resolve_precision(config.train.amp, config.train.channels_last, runtime.device, model)
    precision.prepare_model(model)
    if runtime.is_main:
        logger.info("precision: %s", precision.describe())
    if runtime.distributed and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    loss_fn = create_loss(config.loss.name, **config.loss.options).to(runtime.device)
    optimizer = build_optimizer(config, model.parameters())
    schedule = build_schedule(config, optimizer)
    progress = Progress()

    if resume:
        state = load_checkpoint(run.checkpoint("last"), map_location=runtime.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        progress = Progress(**state["progress"])
        restore_rng(state["rng"])
        if runtime.is_main:
            _warn_if_precision_changed(state.get("precision"), precision)
            _restore_epoch_times(run_dir, progress.history)
            rewrite_metrics(run_dir, progress.history)
    elif runtime.is_main:
        _write_run_files(config, runtime, run, data, precision, initial)

    trained: nn.Module = model
    if runtime.distributed:
        trained = DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
        )
    tracker = (
        MetricsLogger(run, config.tracking.tensorboard, _mlflow_uri(config, run), config.tracking.name)
        if runtime.is_main
        else None
    )
    if tracker is not None and not resume:
        tracker.log_params(flatten(config.model_dump(mode="json")))
        tracker.log_files([run.config, run.environment, run.split, run.input_spec])
    sampler: DistributedSampler[Any] = DistributedSampler(
        data.train,
        num_replicas=runtime.world_size,
        rank=runtime.rank,
        shuffle=True,
        seed=config.train.seed,
        drop_last=True,
    )
    loader = _loader(data.train, config, sampler, runtime)
    augment = training_batch_augmenter(config, runtime)
    mixer = training_mixer(config)
    if runtime.is_main and config.augment is not None:
        where = "per batch on the training device" if augment else "per sample in the data loader"
        logger.info("augmentation: %s (augment.where: %s)", where, config.augment.where)
        if mixer is not None:
            logger.info(
                "mixing: %s of %.0f%% of each batch's samples",
                config.augment.mix,
                100 * config.augment.mix_prob,
            )
    autocast = precision.autocast(runtime.device)
    scaler = torch.amp.GradScaler(enabled=precision.amp == "fp16")

    try:
        while progress.epoch < config.train.epochs:
            epoch = progress.epoch
            started = time.perf_counter()
            sampler.set_epoch(epoch)
            data.train.set_epoch(epoch)
            for stage in (augment, mixer):
                if stage is not None:
                    stage.reseed(worker_seed(config.train.seed, runtime.rank, 0, epoch))
            record: dict[str, Any] = {
                "epoch": epoch,
                "lr": optimizer.param_groups[0]["lr"],
                **_train_one_epoch(
                    trained,
                    loader,
                    (augment, mixer),
                    loss_fn,
                    optimizer,
                    scaler,
                    precision,
                    config,
                    runtime,
                    epoch,
                ),
            }
            schedule.step()
            if (epoch + 1) % config.train.val_every == 0 or epoch + 1 == config.train.epochs:
                validating = time.perf_counter()
                model.eval()
                metrics = validation_epoch(model, task, data, runtime, autocast, loss_fn)
                model.train()
                record.update({f"val_{k}": v for k, v in metrics.items()})
                record["validation_seconds"] = round(time.perf_counter() - validating, 3)
                _update_best(progress, metrics, config, epoch)
            record["seconds"] = round(time.perf_counter() - started, 3)
            progress.history.append(record)
            progress.epoch = epoch + 1
            stop = (
                config.train.early_stop_patience is not None
                and progress.stale_validations >= config.train.early_stop_patience
            )
            if runtime.is_main and tracker is not None:
                # Checkpoint first: it carries the history, so metrics.jsonl can be rebuilt.
                saving = time.perf_counter()
                _save(model, optimizer, schedule, progress, config, data, precision, run, epoch)
                # The whole epoch, checkpoint write included. The checkpoint just written holds the
                # time before the write; the next one (and metrics.jsonl, now) holds these.
                record["checkpoint_seconds"] = round(time.perf_counter() - saving, 3)
                record["seconds"] = round(time.perf_counter() - started, 3)
                tracker.log(record)
                logger.info(_epoch_line(record, config, progress.history))
            if distributed.broadcast_flag(runtime, stop):
                if runtime.is_main:
                    logger.info("early stop: no improvement in %d validations", progress.stale_validations)
                break
    except RuntimeError as error:
        lost = distributed.lost_peer(runtime, error)
        if lost is None:
            raise
        raise lost from error
    finally:
        if tracker is not None:
            tracker.close()
    distributed.barrier(runtime)
    return run_dir


def build_optimizer(config: ExperimentConfig, parameters: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    settings = config.optimizer
    if settings.name == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
            nesterov=True,
        )
    optimizer = torch.optim.AdamW if settings.name == "adamw" else torch.optim.Adam
    return optimizer(parameters, lr=settings.lr, weight_decay=settings.weight_decay)


def learning_rate_factor(config: ExperimentConfig, epoch: int) -> float:
    """The multiplier of the base learning rate for ``epoch`` (0-based)."""
    schedule, epochs = config.schedule, config.train.epochs
    if epoch < schedule.warmup_epochs:
        return (epoch + 1) / (schedule.warmup_epochs + 1)
    if schedule.name == "multistep":
        return schedule.gamma ** sum(epoch >= milestone for milestone in schedule.milestones)
    progress = (epoch - schedule.warmup_epochs) / max(1, epochs - schedule.warmup_epochs)
    if schedule.name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule.name == "poly":
        return (1.0 - progress) ** schedule.power
    return 1.0


def build_schedule(
    config: ExperimentConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: learning_rate_factor(config, epoch))


def _write_run_files(
    config: ExperimentConfig,
    runtime: Runtime,
    run: RunFolder,
    data: TaskData,
    precision: Precision,
    initial: InitialWeights | None,
) -> None:
    from medvol.io.atomic import atomic_path, write_json

    with atomic_path(run.config) as temporary:
        temporary.write_text(dump_config(config))
    write_json(run.split, data.split, default=str)
    write_json(run.fingerprint, data.fingerprint, default=str)
    write_json(run.input_spec, data.input_spec.to_dict())
    if data.normalizer is not None:
        write_json(run.normalizer, data.normalizer.to_dict(), default=str)
    write_json(
        run.environment,
        environment(
            {
                "device": str(runtime.device),
                "world_size": runtime.world_size,
                "seeds": {"train": config.train.seed, "split": config.data.split.seed},
                "torch_threads": torch.get_num_threads(),
                "precision": precision.to_dict(),
                "initial_weights": None if initial is None else initial.to_dict(),
            }
        ),
        default=str,
    )


def _mlflow_uri(config: ExperimentConfig, run: RunFolder) -> str | None:
    if not config.tracking.mlflow:
        return None
    return config.tracking.mlflow_uri or local_mlflow_uri(run)


def _loader(
    dataset: Dataset[Any], config: ExperimentConfig, sampler: DistributedSampler[Any], runtime: Runtime
) -> DataLoader[Any]:
    from medvol.data.dataset import seed_worker

    per_rank = config.train.batch_size // runtime.world_size
    if per_rank * runtime.world_size != config.train.batch_size:
        raise MedvolError(
            None, f"train.batch_size {config.train.batch_size} is not divisible by {runtime.world_size} ranks"
        )
    return DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=config.data.num_workers,
        worker_init_fn=seed_worker,
        pin_memory=runtime.device.type == "cuda",
        drop_last=True,
    )


def _warn_if_precision_changed(recorded: dict[str, Any] | None, precision: Precision) -> None:
    """Say so when a run resumes with another precision than it started with (another machine)."""
    if recorded is None:
        return
    was = (recorded.get("amp"), recorded.get("channels_last"))
    if was != (precision.amp, precision.channels_last):
        logger.info(
            "note: this run trained with amp %s, channels_last %s and resumes with amp %s, "
            "channels_last %s; it will not continue bit for bit as the uninterrupted run would have "
            "(set train.amp and train.channels_last explicitly to keep them)",
            was[0],
            was[1],
            precision.amp,
            precision.channels_last,
        )


def _restore_epoch_times(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Each epoch's full time from metrics.jsonl: a checkpoint holds its own epoch's without the write."""
    logged = {record.get("epoch"): record for record in read_metrics(run_dir)}
    for record in history:
        line = logged.get(record["epoch"])
        if line is not None and "checkpoint_seconds" in line:
            record["seconds"], record["checkpoint_seconds"] = line["seconds"], line["checkpoint_seconds"]


def _train_one_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    stages: tuple[BatchAugmenter | None, BatchMixer | None],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    config: ExperimentConfig,
    runtime: Runtime,
    epoch: int,
) -> dict[str, float]:
    """One pass over this rank's training share; ``stages`` augment, then mix, each batch on the device.

    Returns:
        ``train_loss`` (mean over all ranks' batches), ``samples_per_s`` (all
        ranks) and ``data_wait_share``: the fraction of the epoch this rank
        spent waiting for the next batch rather than computing.
    """
    model.train()
    augment, mixer = stages
    autocast = precision.autocast(runtime.device)
    losses: list[torch.Tensor] = []
    samples, waited = 0, 0.0
    started = time.perf_counter()
    source = _epoch_batches(loader, config, runtime)
    with source as batches:
        bar = tqdm(
            batches,
            total=len(loader),
            desc=f"epoch {epoch + 1}/{config.train.epochs}",
            disable=None if runtime.is_main else True,
            leave=False,
        )
        ready = time.perf_counter()
        for batch in bar:
            waited += time.perf_counter() - ready
            batch = {k: batch[k].to(runtime.device, non_blocking=True) for k in ("image", "label")}
            if augment is not None:
                batch = augment_batch(augment, batch)
            images, targets = batch["image"], batch["label"]
            if mixer is not None:
                images, targets = mixer(images, targets)
            images = precision.prepare_input(images)
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                outputs = model(images)
                loss = loss_fn(outputs, targets)
            scaler.scale(loss).backward()
            if config.train.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.detach())
            samples += len(images)
            if not bar.disable:  # a progress bar on a terminal: the running loss (a device sync per step)
                bar.set_postfix(loss=f"{float(torch.stack(losses).mean()):.4f}", refresh=False)
            ready = time.perf_counter()
    elapsed = time.perf_counter() - started
    # The losses stay on the device until the epoch ends: one sync per epoch, not one per step.
    total = float(torch.stack(losses).double().sum()) if losses else 0.0
    parts = distributed.gather_objects(runtime, [(total, len(losses), samples)])
    return {
        "train_loss": sum(p[0] for p in parts) / max(1, sum(p[1] for p in parts)),
        "samples_per_s": round(sum(p[2] for p in parts) / elapsed, 3),
        "data_wait_share": round(waited / elapsed, 4),
    }


def _epoch_batches(loader: DataLoader[Any], config: ExperimentConfig, runtime: Runtime) -> Any:
    """The epoch's batches, a context manager to iterate over.

    With ``data.prefetch`` and no loader workers, a background thread reads, crops and
    collates the next batches while the model computes (``medvol.data.prefetch``). The
    batched augmentation stays in the training thread on every device (in the thread it
    competed with the model's operators for the cores: 0.90× on the 2-core machine of
    ``docs/benchmarks-training.md``). Otherwise: the loader (its workers read ahead).
    """
    if not (config.data.prefetch and config.data.num_workers == 0):
        return nullcontext(loader)
    return Prefetcher(loader, 2, runtime.device)


def augment_batch(augment: BatchAugmenter, batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with ``image`` ``(B, C, X, Y, Z)`` augmented, and ``label`` with it where it is a
    label map ``(B, 1, X, Y, Z)`` (class indices ``(B,)`` are left alone)."""
    images, targets = batch["image"], batch["label"]
    maps = targets.ndim == images.ndim
    images, moved = augment(images, targets if maps else None)
    return {**batch, "image": images, "label": moved if moved is not None else targets}


def _update_best(progress: Progress, metrics: dict[str, float], config: ExperimentConfig, epoch: int) -> None:
    name = config.train.metric
    if name not in metrics:
        raise MedvolError(
            None, f"train.metric {name!r} is not a validation metric here; choose from {sorted(metrics)}"
        )
    value = metrics[name]
    better = (
        progress.best_metric is None
        or (config.train.metric_mode == "max" and value > progress.best_metric)
        or (config.train.metric_mode == "min" and value < progress.best_metric)
    )
    if better and not math.isnan(value):
        progress.best_metric, progress.best_epoch, progress.stale_validations = value, epoch, 0
    else:
        progress.stale_validations += 1


def _save(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LambdaLR,
    progress: Progress,
    config: ExperimentConfig,
    data: TaskData,
    precision: Precision,
    run: RunFolder,
    epoch: int,
) -> None:
    from medvol.version import __version__

    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "progress": progress.__dict__,
        "rng": capture_rng(),
        "config": config.model_dump(mode="json"),
        "normalizer": None if data.normalizer is None else data.normalizer.to_dict(),
        "precision": precision.to_dict(),
        "medvol_version": __version__,
    }
    save_checkpoint(state, run.checkpoint("last"))
    if progress.best_epoch == epoch:
        save_checkpoint(state, run.checkpoint("best"))


def _epoch_line(
    record: dict[str, Any], config: ExperimentConfig, history: list[dict[str, Any]] | None = None
) -> str:
    """The line logged after an epoch; ``history`` (every epoch so far, ``record`` last) gives the ETA."""
    parts = [f"epoch {record['epoch'] + 1}/{config.train.epochs}", f"loss {record['train_loss']:.4f}"]
    parts += [f"{k} {v:.4f}" for k, v in record.items() if k.startswith("val_") and isinstance(v, float)]
    parts.append(f"lr {record['lr']:.2e}")
    wait = 100 * record["data_wait_share"]
    parts.append(f"{record['samples_per_s']:.1f} samples/s (data wait {wait:.0f}%)")
    parts.append(f"{record['seconds']:.1f}s")
    remaining = remaining_seconds(history or [record], config.train.epochs, config.train.val_every)
    if remaining > 0:
        parts.append(f"ETA {_duration(remaining)}")
    return "  ".join(parts)


def remaining_seconds(history: list[dict[str, Any]], epochs: int, val_every: int) -> float:
    """Seconds the epochs after ``history`` will take, without early stopping.

    Training and validation are estimated apart, since a validation epoch can
    take many times a training one: the mean training time of the epochs so
    far (``seconds`` less ``validation_seconds``) times the epochs left, plus
    the mean validation time times the validations left (every ``val_every``
    epochs and the last). Epochs logged before medvol recorded
    ``validation_seconds`` count as training epochs when they have no
    validation metrics, and as validation epochs (their time beyond the mean
    training epoch) when they do.

    Args:
        history: ``metrics.jsonl`` records of the epochs run, in order.
        epochs: ``train.epochs``.
        val_every: ``train.val_every``.
    """
    if not history:
        return 0.0
    done = int(history[-1]["epoch"]) + 1
    training, validation, untimed = [], [], []
    for record in history:
        seconds = float(record["seconds"])
        if "validation_seconds" in record:
            training.append(seconds - float(record["validation_seconds"]))
            validation.append(float(record["validation_seconds"]))
        elif any(key.startswith("val_") for key in record):
            untimed.append(seconds)
        else:
            training.append(seconds)
    train_mean = float(np.mean(training or untimed))
    validation += [max(0.0, seconds - train_mean) for seconds in untimed]
    validation_mean = float(np.mean(validation)) if validation else 0.0
    left = range(done, epochs)
    validations = sum((epoch + 1) % val_every == 0 or epoch + 1 == epochs for epoch in left)
    return len(left) * train_mean + validations * validation_mean


def _duration(seconds: float) -> str:
    """``3h02m``, ``4m05s`` or ``12s``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
