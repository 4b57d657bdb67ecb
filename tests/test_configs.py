"""Every config shipped in configs/ is valid and names models and losses that exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvol.config import load_config
from medvol.losses import available_losses
from medvol.models import available_models

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_is_valid(path: Path) -> None:
    config = load_config(path)
    assert config.model.name in available_models()
    assert config.loss.name in available_losses()


def test_configs_exist() -> None:
    assert len(CONFIGS) >= 2
