"""``--set`` overrides and config files that are not plain YAML: a clear error naming the input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medvol.cli import main
from medvol.config import apply_overrides, load_config
from medvol.errors import MedvolError

MINIMAL = {
    "data": {"task": "medmnist-classification", "root": "data.npz"},
    "model": {"name": "resnet18", "options": {"num_classes": 2}},
    "loss": {"name": "cross_entropy"},
}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    return path


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("train.epochs=[1", "not valid YAML (expected"),
        (
            "a=!!python/object:os.system x",
            "YAML tags are not accepted (!!python/object:os.system)",
        ),
        ("train={epochs: 1, epochs: 2}", "found the key 'epochs' twice"),
        ("train..epochs=3", "expects key=value"),
    ],
)
def test_a_bad_override_is_a_medvol_error_naming_it(
    config_path: Path, override: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(MedvolError) as raised:
        load_config(config_path, [override])
    assert repr(override) in str(raised.value) and problem in str(raised.value)
    # and on the command line: one line of error, exit code 1, not "unexpected error"
    assert main(["train", str(config_path), "--set", override]) == 1
    err = capsys.readouterr().err
    assert "unexpected" not in err and problem in err


def test_plain_values_and_safe_tags_still_work() -> None:
    data = apply_overrides(
        {}, ["train.epochs=5", "optimizer.lr=1e-3", "a.b=!!str 12", "s.x=[1, 2]", "name=x=y"]
    )
    assert data == {
        "train": {"epochs": 5},
        "optimizer": {"lr": "1e-3"},
        "a": {"b": "12"},
        "s": {"x": [1, 2]},
        "name": "x=y",
    }


def test_a_config_with_a_key_twice_names_the_key_and_its_line(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(yaml.safe_dump(MINIMAL) + "train:\n  epochs: 3\ntrain:\n  epochs: 4\n")
    with pytest.raises(
        MedvolError,
        match=r"twice\.yaml: cannot read the config \(line 12, column 1: found the key 'train' twice\)",
    ):
        load_config(path)
    merged = tmp_path / "merged.yaml"
    merged.write_text(
        yaml.safe_dump(MINIMAL) + "base: &base {epochs: 3, seed: 1}\ntrain:\n  <<: *base\n  epochs: 4\n"
    )
    data = yaml.safe_load(merged.read_text())
    assert data["train"] == {"epochs": 4, "seed": 1}  # an explicit key overrides a merged one, as YAML says
    with pytest.raises(MedvolError, match="unknown key base"):  # read, then refused by the schema only
        load_config(merged)


def test_a_binary_file_given_as_config(tmp_path: Path) -> None:
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe" * 10)
    with pytest.raises(MedvolError, match=r"scan\.nii\.gz: cannot read the config: not a text"):
        load_config(path)
