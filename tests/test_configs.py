"""Every config shipped (configs/ and the studies' recipes) builds its model and loss and trains a step.

The options are passed to the real factories, so a misspelt or removed option, a
``num_classes`` that disagrees with the data, or a loss that cannot take the
model's output fails here rather than minutes into ``medvol train``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medvol.config import ExperimentConfig, load_config
from medvol.losses import create_loss
from medvol.models import create_model
from medvol.reproduce import STUDIES_DIR, load_study

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted([*CONFIG_DIR.glob("*.yaml"), *(STUDIES_DIR / "recipes").glob("*.yaml")])
STUDIES = sorted(STUDIES_DIR.glob("*.yaml"))
CLASSIFIER_INPUT = (16, 16, 16)  # the ResNets pool globally: a small grid costs least


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.name}" for p in CONFIGS])
def test_shipped_config_builds_its_model_and_loss(path: Path) -> None:
    config = load_config(path)
    model = create_model(config.model.name, **config.model.options)
    loss_fn = create_loss(config.loss.name, **config.loss.options)
    check_one_step(config, model, loss_fn)


def check_one_step(config: ExperimentConfig, model: torch.nn.Module, loss_fn: torch.nn.Module) -> None:
    """One forward and backward pass on a batch of 2 random volumes of the configured shape."""
    torch.manual_seed(0)
    num_classes = config.data.num_classes
    segmentation = config.data.task == "segmentation"
    grid = tuple(config.data.patch_size) if segmentation and config.data.patch_size else CLASSIFIER_INPUT
    channels = config.model.options.get("in_channels", 1)
    images = torch.randn(2, channels, *grid)
    outputs = model(images)
    if segmentation:
        assert outputs.shape == (2, num_classes, *grid)
        targets = torch.randint(0, num_classes, (2, 1, *grid))
    else:
        assert outputs.shape == (2, num_classes)
        targets = torch.tensor([0, num_classes - 1])
    loss = loss_fn(outputs, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_study_budgets_are_shipped_configs(path: Path) -> None:
    study = load_study(path)
    assert {"cpu", "full"} <= set(study.budgets) and study.metrics
    for budget in study.budgets.values():
        assert budget in {p.resolve() for p in CONFIGS}, budget  # so the test above built it


@pytest.mark.parametrize("path", STUDIES, ids=[p.name for p in STUDIES])
def test_study_recipes_name_data_the_study_fetches(path: Path) -> None:
    """Each recipe's data.root is in the data folder, inside a data entry with its URL and MD5."""
    study = load_study(path)
    for budget in study.budgets.values():
        root = load_config(budget).data.root
        assert not root.is_absolute(), budget
        assert any(Path(source.path) in (root, *root.parents) for source in study.data), (budget, root)


def test_configs_exist() -> None:
    assert len(CONFIGS) >= 2 and len(STUDIES) >= 1
