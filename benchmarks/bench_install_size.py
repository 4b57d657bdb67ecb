"""Disk size of what ``pip install 'medvol[infer]'`` installs, against what ``medvol[train]`` adds.

Usage (from the project root)::

    .venv/bin/python benchmarks/bench_install_size.py [--out results.json]

The requirements come from ``pyproject.toml`` (base dependencies plus the
``infer`` extra; ``train``'s for the baseline), followed through the
requirements of the distributions installed in this environment (the same
walk as ``tests/test_infer_without_torch.py``); a distribution's size is the
sum of its installed files. Which torch build is installed decides the
baseline: the CPU wheel here, PyPI's Linux default is the larger CUDA build.
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib import metadata
from pathlib import Path

import tomllib
from common import environment, finish_report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_infer_without_torch import declared_closure  # noqa: E402


def megabytes(names: set[str]) -> float:
    """Installed size of the distributions ``names``, MB (10⁶ bytes)."""
    total = 0
    for name in names:
        distribution = metadata.distribution(name)
        for file in distribution.files or []:
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                total += path.stat().st_size
    return round(total / 1e6, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    infer = declared_closure([*project["dependencies"], *extras["infer"]], set())
    train = declared_closure(extras["train"], set()) - infer
    fields = {
        "environment": environment(),
        "medvol[infer]": {"distributions": sorted(infer), "megabytes": megabytes(infer)},
        "medvol[train] adds": {"distributions": sorted(train), "megabytes": megabytes(train)},
        "torch": metadata.version("torch"),
    }
    fields["ratio_infer_to_infer_plus_train"] = round(
        fields["medvol[infer]"]["megabytes"]
        / (fields["medvol[infer]"]["megabytes"] + fields["medvol[train] adds"]["megabytes"]),
        3,
    )
    finish_report(fields, started, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
