"""Experiment configs: YAML to typed sections, overrides, and errors users can act on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medvol.config import dump_config, load_config, parse_config
from medvol.errors import MedvolError

MINIMAL = {
    "data": {"task": "medmnist-classification", "root": "data.npz"},
    "model": {"name": "resnet18", "options": {"num_classes": 2}},
    "loss": {"name": "cross_entropy"},
}


def write_yaml(path: Path, data: dict) -> Path:  # type: ignore[type-arg]
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_and_overrides(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "exp.yaml", MINIMAL)
    config = load_config(path, ["train.epochs=7", "optimizer.lr=0.01", "schedule.milestones=[3, 5]"])
    assert config.train.epochs == 7
    assert config.optimizer.lr == 0.01
    assert config.schedule.milestones == [3, 5]
    assert config.data.split.seed == 12345  # nnU-Net's split seed by default
    again = parse_config(yaml.safe_load(dump_config(config)))
    assert again == config  # the saved config reproduces the run's config


def test_unknown_key_names_it_and_suggests(tmp_path: Path) -> None:
    data = {**MINIMAL, "train": {"epoch": 3}}
    with pytest.raises(MedvolError, match=r"unknown key train\.epoch \(did you mean train\.epochs\?\)"):
        load_config(write_yaml(tmp_path / "exp.yaml", data))
    with pytest.raises(MedvolError, match="unknown key optimiser"):
        parse_config({**MINIMAL, "optimiser": {}})


def test_wrong_types_and_values_are_explained(tmp_path: Path) -> None:
    with pytest.raises(MedvolError, match=r"train\.epochs: Input should be greater than or equal to 1"):
        parse_config({**MINIMAL, "train": {"epochs": 0}})
    with pytest.raises(MedvolError, match=r"optimizer\.name: Input should be 'adam', 'adamw' or 'sgd'"):
        parse_config({**MINIMAL, "optimizer": {"name": "lion"}})
    with pytest.raises(MedvolError, match="spacing"):
        parse_config({**MINIMAL, "preprocess": {"spacing": [1, 1, 1]}})


def test_bad_files_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("data: [unclosed")
    with pytest.raises(MedvolError, match=r"broken\.yaml: cannot read the config"):
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(MedvolError, match="key=value"):
        load_config(write_yaml(tmp_path / "exp.yaml", MINIMAL), ["train.epochs"])
