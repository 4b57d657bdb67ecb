"""What a researcher hands medvol on a first try: unsafe checkpoints, links, leftovers of killed runs."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from medvol.engine.checkpoint import load_checkpoint
from medvol.errors import MedvolError


def test_a_checkpoint_with_code_is_refused_without_advice_to_unpickle(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"model": argparse.Namespace(a=1)}, path)  # any class outside torch's allow-list
    with pytest.raises(MedvolError) as raised:
        load_checkpoint(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: refused")
    assert "argparse.Namespace" in message
    assert "weights_only" not in message and "will likely succeed" not in message
    assert "\n" not in message


def test_a_corrupt_checkpoint_is_named_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip archive")
    with pytest.raises(MedvolError) as raised:
        load_checkpoint(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert "weights_only" not in str(raised.value) and "\n" not in str(raised.value)
