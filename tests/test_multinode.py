"""Training on two hosts, for real: two network namespaces joined by a veth pair.

Each "host" is a network namespace with its own address and, while torchrun runs in it,
its own hostname (a UTS namespace); both resolve each other by name, as machines on a
cluster do. Both run the command docs/training.md gives for two machines
(``torchrun --nnodes=2 ... --rdzv_backend=c10d --rdzv_endpoint=FIRST:PORT``), gloo on
CPU. The result must equal one process's (SGD, group norm, as in tests/test_train.py);
a host killed mid-run must stop the other within a bounded time with a clear error, and
``--resume`` on both must finish at the weights of an uninterrupted run.

Creating namespaces needs root, ``ip`` (iproute2) and ``unshare`` (util-linux). Without
them the tests skip; under CI=true, when CI runs as root, that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from medvol import demo
from medvol.cli import main
from medvol.engine.tracking import read_metrics
from tests.shared_samples import write_adrenal_subset, write_config

REPOSITORY = Path(__file__).resolve().parents[1]
NODE_TIMEOUT_S = 300  # one launch of both hosts, start-up and rendezvous included
STOP_WITHIN_S = 60  # how long the surviving host may take to stop after the other is killed


@dataclass(frozen=True)
class Host:
    namespace: str
    name: str
    address: str
    device: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _namespace_pids(host: Host) -> list[int]:
    listed = subprocess.run(["ip", "netns", "pids", host.namespace], capture_output=True, text=True)
    return [int(pid) for pid in listed.stdout.split()]


def _kill_host(host: Host) -> None:
    """Every process in the host's namespace, at once (the machine died)."""
    for pid in _namespace_pids(host):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _cannot(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true" and os.geteuid() == 0:
        pytest.fail(f"{reason}; CI runs as root, so it must test two hosts")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[Host, Host]]:
    """Two namespaces ``medvol-node-a`` (10.213.0.1) and ``medvol-node-b`` (10.213.0.2); removed after."""
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            _cannot(f"`{tool}` not found (apt-get install iproute2 util-linux)")
    tag = str(os.getpid())[-6:]
    pair = (
        Host(f"medvol-{tag}-a", "medvol-node-a", "10.213.0.1", f"mv{tag}a"),
        Host(f"medvol-{tag}-b", "medvol-node-b", "10.213.0.2", f"mv{tag}b"),
    )
    hosts_file = "".join(f"{host.address} {host.name}\n" for host in pair)
    try:
        try:
            for host in pair:
                _ip("netns", "add", host.namespace)
            _ip("link", "add", pair[0].device, "type", "veth", "peer", "name", pair[1].device)
            for host in pair:
                _ip("link", "set", host.device, "netns", host.namespace)
                _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", host.device)
                _ip("-n", host.namespace, "link", "set", host.device, "up")
                _ip("-n", host.namespace, "link", "set", "lo", "up")
                # `ip netns exec` shows /etc/netns/NAME/hosts as /etc/hosts inside the namespace.
                etc = Path("/etc/netns") / host.namespace
                etc.mkdir(parents=True, exist_ok=True)
                (etc / "hosts").write_text(f"127.0.0.1 localhost\n{hosts_file}")
        except (subprocess.CalledProcessError, OSError) as error:
            detail = getattr(error, "stderr", "") or str(error)
            _cannot(f"cannot create network namespaces here: {detail.strip()}")
        yield pair
    finally:
        for host in pair:
            _kill_host(host)
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / host.namespace, ignore_errors=True)


def launch(
    pair: tuple[Host, Host], port: int, config: Path, name: str, *extra: str
) -> list[subprocess.Popen[Any]]:
    """The two-machine command of docs/training.md (one process per host), on both hosts.

    Host a is the rendezvous endpoint; each host's output goes to ``NAME-HOST.log`` beside the config.
    """
    torchrun = Path(sys.executable).parent / "torchrun"
    nodes = []
    for host in pair:
        command = [
            "ip", "netns", "exec", host.namespace,
            "unshare", "--uts", "sh", "-c", f'hostname {host.name} && exec "$@"', "sh",
            str(torchrun), "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
            f"--rdzv_endpoint={pair[0].name}:{port}", f"--rdzv_id=medvol-{port}",
            "-m", "medvol", "train", str(config), *extra,
        ]  # fmt: skip
        with open(log_path(config, name, host), "w") as log:
            nodes.append(
                subprocess.Popen(
                    command,
                    cwd=REPOSITORY,
                    env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPOSITORY)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return nodes


def log_path(config: Path, name: str, host: Host) -> Path:
    return config.parent / f"{name}-{host.name}.log"


def logs_of(config: Path, name: str, pair: tuple[Host, Host]) -> str:
    return "\n".join(f"--- {host.name}:\n{log_path(config, name, host).read_text()[-3000:]}" for host in pair)


def wait_both(
    nodes: list[subprocess.Popen[Any]], config: Path, name: str, pair: tuple[Host, Host]
) -> list[int]:
    deadline = time.monotonic() + NODE_TIMEOUT_S
    codes = []
    for node in nodes:
        try:
            codes.append(node.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for other in nodes:
                other.kill()
            pytest.fail(f"the hosts did not finish within {NODE_TIMEOUT_S} s:\n{logs_of(config, name, pair)}")
    return codes


def same_weights(run: Path, reference: Path) -> None:
    mine = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    theirs = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert mine.keys() == theirs.keys()
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def setup(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The config (one per run name) and the one-process reference run, trained once."""
    folder = tmp_path_factory.mktemp("multinode")
    data = write_adrenal_subset(shared_data, folder / "adrenal.npz", {"train": 96, "val": 40, "test": 8})
    configs = {}
    for name in ("single", "two-hosts", "killed"):
        config = demo.medmnist_classifier(data, epochs=3, output_dir=folder / "runs", name=name, norm="group")
        config["optimizer"] = {"name": "sgd", "lr": 0.01, "momentum": 0.9}
        config["train"].update({"batch_size": 48, "amp": "none", "channels_last": False})
        config["tracking"]["tensorboard"] = False
        configs[name] = write_config(folder / f"{name}.yaml", config)
    assert main(["train", str(configs["single"])]) == 0
    return {**configs, "runs": folder / "runs", "logs": folder}


def test_two_hosts_reach_the_weights_of_one_process(hosts: tuple[Host, Host], setup: dict[str, Path]) -> None:
    config = setup["two-hosts"]
    nodes = launch(hosts, 29500, config, "two-hosts")
    assert wait_both(nodes, config, "two-hosts", hosts) == [0, 0], logs_of(config, "two-hosts", hosts)
    run = setup["runs"] / "two-hosts"
    same_weights(run, setup["runs"] / "single")
    assert [e["val_cases"] for e in read_metrics(run)] == [40, 40, 40]  # every case once, none twice


def test_a_lost_host_stops_the_other_and_resume_on_both_finishes(
    hosts: tuple[Host, Host], setup: dict[str, Path]
) -> None:
    config, run = setup["killed"], setup["runs"] / "killed"
    nodes = launch(hosts, 29510, config, "killed")
    deadline = time.monotonic() + NODE_TIMEOUT_S
    while len(read_metrics(run)) < 1:  # the first epoch is checkpointed; the second has begun
        assert time.monotonic() < deadline, logs_of(config, "killed", hosts)
        assert all(node.poll() is None for node in nodes), logs_of(config, "killed", hosts)
        time.sleep(0.2)
    _kill_host(hosts[1])
    killed = time.monotonic()
    try:
        code = nodes[0].wait(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        nodes[0].kill()
        pytest.fail(
            f"host a still ran {STOP_WITHIN_S} s after host b died:\n{logs_of(config, 'killed', hosts)}"
        )
    stopped = time.monotonic() - killed
    nodes[1].wait()
    survivor = log_path(config, "killed", hosts[0]).read_text()
    assert code != 0, survivor[-3000:]
    assert "another process of this torchrun job stopped" in survivor, survivor[-3000:]
    assert "rerun the same command with --resume on every node" in survivor
    print(f"host a stopped {stopped:.1f} s after host b was killed")
    assert 1 <= len(read_metrics(run)) < 3

    nodes = launch(hosts, 29520, config, "resumed", "--resume")
    assert wait_both(nodes, config, "resumed", hosts) == [0, 0], logs_of(config, "resumed", hosts)
    assert [e["epoch"] for e in read_metrics(run)] == [0, 1, 2]
    same_weights(run, setup["runs"] / "single")
