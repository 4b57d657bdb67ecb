"""Self-supervised pretraining on the training images, without their labels (``medvol pretrain``).

``pretrain(config)`` reads the same experiment config as ``medvol train`` and
trains the config's model to restore its training images from
Models-Genesis-style distortions (``medvol.augment.restoration``) with a
mean-squared-error loss; no label enters the loss, and segmentation patches
are drawn at random positions (``data.foreground_fraction`` is set to 0, so
the labels do not steer them either). ``augment`` is not used: the
distortions are the task.

- a segmenter (UNet, SegResNet, DynUNet ...) learns the restoration whole,
  through a 1×1×1 convolution from its class outputs to the input channels
  that is not kept;
- a 3D ResNet classifier learns it through its encoder (stem and stages) and a
  small decoder (a 1×1×1 convolution to the input channels, upsampled
  trilinearly to the input's size) that is not kept.

The run folder gets ``config.yaml``, ``split.json`` (the cases whose images
were used), ``pretrain.json`` (loss per epoch) and
``checkpoints/pretrained.pt``: the weights under ``"model"`` without the
tensors whose shape depends on the number of classes (the output layer, or
the classifier ``fc``). ``model.init: .../checkpoints/pretrained.pt`` starts a
supervised run from it; those tensors keep their random initialisation and
are listed as missing in the run's report. Runs on one device (no torchrun).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from medvol.augment import worker_seed
from medvol.augment.restoration import distort
from medvol.config import ExperimentConfig, dump_config, parse_config
from medvol.engine import distributed
from medvol.engine.checkpoint import save_checkpoint
from medvol.engine.run_folder import RunFolder
from medvol.engine.run_start import prepare_run_folder
from medvol.errors import ConfigurationError, MedvolError
from medvol.io.atomic import write_json
from medvol.logs import get_logger
from medvol.models import create_model
from medvol.models.resnet import ResNet3d
from medvol.tasks import task_for

logger = get_logger(__name__)

PRETRAINED = "pretrained.pt"


class EncoderRestorer(nn.Module):
    """A 3D ResNet's stem and stages with a throw-away decoder: ``(B, C, X, Y, Z)`` → same shape."""

    def __init__(self, encoder: ResNet3d) -> None:
        super().__init__()
        self.encoder = encoder
        features = encoder.fc.in_features
        self.decoder = nn.Conv3d(features, encoder.in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coarse = self.decoder(self.encoder.stages(self.encoder.stem(x)))
        return F.interpolate(coarse, size=x.shape[2:], mode="trilinear", align_corners=False)


class SegmenterRestorer(nn.Module):
    """A segmenter with a throw-away 1×1×1 convolution from its K outputs to the C input channels."""

    def __init__(self, segmenter: nn.Module, num_classes: int, channels: int) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.decoder = nn.Conv3d(num_classes, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.segmenter(x)
        if isinstance(output, tuple | list):  # deep supervision: the full-resolution head
            output = output[0]
        restored: torch.Tensor = self.decoder(output)
        return restored


def pretrain(config: ExperimentConfig) -> Path:
    """Pretrain ``config.model`` by restoration for ``train.epochs`` epochs; returns the run folder.

    Raises:
        MedvolError: the run folder already holds a pretrained checkpoint, or
            medvol was started under torchrun.
    """
    config = _unlabelled(config)
    runtime = distributed.start(config.train.device)
    try:
        if runtime.distributed:
            raise ConfigurationError("medvol pretrain runs on one device: start it without torchrun")
        run = RunFolder(config.tracking.output_dir / config.tracking.name)
        if (run.checkpoints / PRETRAINED).is_file():
            raise MedvolError(run.path, "holds a pretrained checkpoint already; choose another tracking.name")
        prepare_run_folder(run, resume=False)
        torch.manual_seed(config.train.seed)
        data = task_for(config).build_data(runtime, run)
        model, network = restoration_network(config)
        network = network.to(runtime.device)
        with_head = _class_dependent_keys(config)
        _write_start(config, run, data.split)
        loader = DataLoader(
            data.train, batch_size=config.train.batch_size, shuffle=True, drop_last=True, num_workers=0
        )
        optimizer = torch.optim.Adam(network.parameters(), lr=config.optimizer.lr)
        history = [
            _epoch(network, loader, optimizer, config, runtime.device, epoch)
            for epoch in range(config.train.epochs)
        ]
        state = {k: v for k, v in model.state_dict().items() if k not in with_head}
        save_checkpoint(
            {
                "model": state,
                "pretraining": {
                    "method": "restoration (Models Genesis distortions), mean squared error",
                    "model": config.model.name,
                    "epochs": config.train.epochs,
                    "steps": sum(int(h["steps"]) for h in history),
                    "left_out": sorted(with_head),
                },
            },
            run.checkpoints / PRETRAINED,
        )
        write_json(run.path / "pretrain.json", {"history": history, "left_out": sorted(with_head)})
        return run.path
    finally:
        distributed.stop(runtime)


def _unlabelled(config: ExperimentConfig) -> ExperimentConfig:
    """The config without augmentation and, for segmentation, with patches placed at random."""
    data = config.model_dump(mode="json")
    data["augment"] = None
    if config.data.task == "segmentation" and config.data.patch_size is not None:
        data["data"]["foreground_fraction"] = 0.0
    return parse_config(data)


def restoration_network(config: ExperimentConfig) -> tuple[nn.Module, nn.Module]:
    """``(model, network)``: the config's model as the file will hold it, and the network trained
    (the model with a throw-away decoder to the input channels)."""
    options = dict(config.model.options)
    channels = int(options.get("in_channels", 1))
    model = create_model(config.model.name, **options)
    if isinstance(model, ResNet3d):
        return model, EncoderRestorer(model)
    return model, SegmenterRestorer(model, config.data.num_classes, channels)


def _class_dependent_keys(config: ExperimentConfig) -> set[str]:
    """The model's tensors whose shape changes with ``num_classes`` (its output layer)."""
    options = dict(config.model.options)
    states = [
        create_model(config.model.name, **{**options, "num_classes": n}).state_dict()
        for n in (config.data.num_classes, config.data.num_classes + 1)
    ]
    return {k for k in states[0] if states[0][k].shape != states[1][k].shape}


def _epoch(
    network: nn.Module,
    loader: DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    config: ExperimentConfig,
    device: torch.device,
    epoch: int,
) -> dict[str, float]:
    """One pass: distort each image, restore it, step on the mean squared error."""
    rng = np.random.default_rng(worker_seed(config.train.seed, 0, 0, epoch))
    network.train()
    total, steps, started = 0.0, 0, time.perf_counter()
    for batch in loader:
        original = batch["image"].float()
        distorted = torch.from_numpy(np.stack([distort(x, rng) for x in original.numpy()]))
        output = network(distorted.to(device))
        loss = F.mse_loss(output, original.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, steps = total + float(loss.detach()), steps + 1
    record = {"epoch": epoch, "loss": total / max(1, steps), "steps": steps}
    record["seconds"] = round(time.perf_counter() - started, 3)
    logger.info(
        "pretrain epoch %d/%d  loss %.4f  %.1fs",
        epoch + 1,
        config.train.epochs,
        record["loss"],
        record["seconds"],
    )
    return record


def _write_start(config: ExperimentConfig, run: RunFolder, split: dict[str, Any]) -> None:
    from medvol.io.atomic import atomic_path

    with atomic_path(run.config) as temporary:
        temporary.write_text(dump_config(config))
    write_json(run.split, split, default=str)
