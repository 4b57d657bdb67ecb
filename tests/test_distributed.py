"""torchrun's environment: read and checked in one place, refused with a clear message when wrong;
a lost peer told in one line; a process that joined a process group ends cleanly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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


AFTER_DISTRIBUTED_TRAINING = """
import atexit, sys, torch
from medvol.engine import distributed
runtime = distributed.start("cpu")
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
model(torch.ones(1, 2)).sum().backward()
del model
distributed.stop(runtime)
atexit.register(print, "interpreter shutdown ran", flush=True)
print(f"rank {runtime.rank} wrote its files")  # buffered: stdout is a pipe
distributed.end_process_if_joined(int(sys.argv[1]))
print("still running", flush=True)
"""


@pytest.mark.parametrize("code", [0, 3])
def test_a_process_that_joined_a_group_ends_with_its_code_and_its_output_flushed(
    tmp_path: Path, code: int
) -> None:
    """The gloo threads DDP leaves behind are never torn down by interpreter shutdown, which
    sometimes aborted a finished training run (SIGABRT) and made torchrun report it failed."""
    script = tmp_path / "after_training.py"
    script.write_text(AFTER_DISTRIBUTED_TRAINING)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", str(script), str(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    output = result.stdout + result.stderr
    assert "rank 0 wrote its files" in output and "rank 1 wrote its files" in output, output[-3000:]
    assert "interpreter shutdown ran" not in output and "still running" not in output
    if code == 0:
        assert result.returncode == 0, output[-3000:]
    else:
        assert result.returncode != 0 and f"exitcode  : {code}" in output, output[-3000:]
