"""torchrun's environment: read and checked in one place, refused with a clear message when wrong."""

from __future__ import annotations

import pytest
import torch

from medvol.engine.launch import Launch, launch_environment
from medvol.errors import MedvolError


def test_without_torchrun_this_process_is_rank_0_of_1() -> None:
    assert launch_environment({}) == Launch(rank=0, local_rank=0, world_size=1)
    assert launch_environment({"RANK": "", "LOCAL_RANK": " ", "WORLD_SIZE": ""}) == Launch(0, 0, 1)


def test_torchrun_values_are_read() -> None:
    environ = {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8"}
    assert launch_environment(environ) == Launch(rank=5, local_rank=1, world_size=8)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one' is not an integer"),
        ({"LOCAL_RANK": "0.5", "WORLD_SIZE": "2"}, "LOCAL_RANK='0.5' is not an integer"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be at least 1"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, r"RANK=2 is not a rank of WORLD_SIZE=2 \(ranks are 0 to 1\)"),
        ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK=-1 is not a rank of WORLD_SIZE=2"),
        ({"RANK": "1"}, "RANK=1 is not a rank of WORLD_SIZE=1"),
        ({"LOCAL_RANK": "4", "WORLD_SIZE": "4"}, "LOCAL_RANK=4 is not a rank of WORLD_SIZE=4"),
    ],
)
def test_bad_values_are_refused_by_name(environ: dict[str, str], message: str) -> None:
    with pytest.raises(MedvolError, match=message):
        launch_environment(environ)


def test_start_refuses_a_bad_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from medvol.engine import distributed

    monkeypatch.setenv("WORLD_SIZE", "many")
    with pytest.raises(MedvolError, match="WORLD_SIZE='many' is not an integer"):
        distributed.start("cpu")


def test_a_lost_peer_is_told_in_one_line_and_other_errors_are_not() -> None:
    from medvol.engine.distributed import Runtime, lost_peer

    two = Runtime(device=torch.device("cpu"), rank=1, world_size=2, local_rank=0)
    gloo = RuntimeError(
        "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
        "[10.213.0.2]:61664. This is typically caused by a remote worker crashing. Check the logs."
    )
    error = lost_peer(two, gloo)
    assert error is not None
    assert str(error) == (
        "rank 1 of 2: another process of this torchrun job stopped (Connection closed by peer "
        "[10.213.0.2]:61664); rerun the same command with --resume on every node to continue from "
        "the last checkpoint"
    )
    assert lost_peer(two, RuntimeError("shapes cannot be multiplied")) is None
    one = Runtime(device=torch.device("cpu"), rank=0, world_size=1, local_rank=0)
    assert lost_peer(one, gloo) is None
