"""The tutorial notebooks and the public API they are written against.

Every notebook in ``notebooks/`` runs top to bottom in a fresh kernel with its
``parameters`` cell set to tiny settings (one epoch, few cases, outputs in a
temporary folder). The committed files must stay stripped (no outputs, no
execution counts) and may use only the public API: ``import medvol`` and
``medvol.NAME`` for names in ``medvol.__all__``, never ``medvol.<submodule>``.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import medvol

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))

# Tiny settings per notebook (OUTPUT_DIR is always set to a temporary folder),
# and the wall-clock limit for running the whole notebook.
TINY: dict[str, dict[str, Any]] = {
    "01_load_and_inspect": {},
    "02_augmentation_and_synthetic_data": {"DRAWS": 2, "SYNTHETIC_CASES": 1, "SYNTHETIC_PER_CASE": 1},
    "03_classifier_adrenalmnist3d": {"EPOCHS": 1, "TRAIN_CASES": 64, "BOOTSTRAP_RESAMPLES": 100},
    "04_segmenter_hippocampus": {"EPOCHS": 1, "VAL_EVERY": 1, "TRAIN_CASES": 4, "BOOTSTRAP_RESAMPLES": 100},
    "05_clips_temporal_context": {
        "EPOCHS": 1,
        "TRAIN_CLIPS": 32,
        "VAL_CLIPS": 8,
        "TEST_CLIPS": 8,
        "BOOTSTRAP_RESAMPLES": 100,
        "DEVICE": "cpu",
    },
}
TIMEOUT_S = {
    "01_load_and_inspect": 120,
    "02_augmentation_and_synthetic_data": 120,
    "03_classifier_adrenalmnist3d": 180,
    "04_segmenter_hippocampus": 180,
    "05_clips_temporal_context": 120,
}
HEAVY_MODULES = ("torch", "SimpleITK", "monai", "nibabel", "pydicom")


def _read(path: Path) -> Any:
    import nbformat

    return nbformat.read(path, as_version=4)


def _code_cells(notebook: Any) -> list[Any]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _parameters_cell(notebook: Any) -> Any:
    cells = _code_cells(notebook)
    assert cells, "the notebook has no code"
    first = cells[0]
    assert "parameters" in first.metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    return first


def _assigned_names(source: str) -> list[str]:
    names = []
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names.extend(target.id for target in targets if isinstance(target, ast.Name))
    return names


# ------------------------------------------------------------------------------- public API


def test_every_public_name_resolves() -> None:
    assert "__version__" in medvol.__all__
    assert medvol.__all__ == sorted(medvol.__all__)
    for name in medvol.__all__:
        assert getattr(medvol, name) is not None, name
        assert name in dir(medvol)
        # A submodule of the same name would replace the attribute once imported.
        assert importlib.util.find_spec(f"medvol.{name}") is None, f"medvol.{name} is also a module"
    with pytest.raises(AttributeError):
        _ = medvol.no_such_name  # type: ignore[attr-defined]


def test_public_names_are_the_documented_objects() -> None:
    from medvol.engine.train import train
    from medvol.prediction import Options, predict
    from medvol.reproduce import reproduce

    assert medvol.train is train
    assert medvol.predict_folder is predict
    assert medvol.PredictOptions is Options
    assert medvol.reproduce_study is reproduce
    for name in medvol.__all__:
        if name != "__version__":
            assert f"``{name}``" in (medvol.__doc__ or ""), f"the module docstring does not list {name}"


def test_import_medvol_stays_light() -> None:
    probe = f"import sys, medvol; medvol.__all__; print([m for m in {HEAVY_MODULES!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ------------------------------------------------------------------------ committed files


def test_there_are_notebooks() -> None:
    assert [path.stem for path in NOTEBOOKS] == sorted(TINY)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_stripped_and_valid(path: Path) -> None:
    import nbformat

    notebook = _read(path)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    for number, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {number} has outputs: strip them before committing"
            assert cell.execution_count is None, f"cell {number} has an execution count"
        assert "execution" not in cell.metadata, f"cell {number} records execution times"
    assert "widgets" not in notebook.metadata, "the notebook holds widget state (an output)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_uses_the_public_api_only(path: Path) -> None:
    public = set(medvol.__all__)
    for number, cell in enumerate(_code_cells(_read(path))):
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            where = f"{path.name}, code cell {number}, line {getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("medvol."), f"{where}: import {alias.name}"
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "medvol":
                assert node.module == "medvol", f"{where}: from {node.module} import ..."
                for alias in node.names:
                    assert alias.name in public, f"{where}: medvol.{alias.name} is not public"
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "medvol"
            ):
                assert node.attr in public, f"{where}: medvol.{node.attr} is not public"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_parameters_cell_holds_the_knobs(path: Path) -> None:
    source = _parameters_cell(_read(path)).source
    tree = ast.parse(source)
    assert all(isinstance(node, ast.Assign | ast.AnnAssign) for node in tree.body), (
        "the parameters cell must only assign values (no imports or calls)"
    )
    names = _assigned_names(source)
    assert "OUTPUT_DIR" in names
    missing = set(TINY[path.stem]) - set(names)
    assert not missing, f"tiny settings for parameters the notebook lacks: {sorted(missing)}"


# ------------------------------------------------------------------------------ execution


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernelspec that runs this interpreter (the venv's), whatever kernels are installed."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    folder = tmp_path_factory.mktemp("kernels")
    spec = folder / "medvol-test" / "kernel.json"
    spec.parent.mkdir()
    spec.write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "medvol tests",
                "language": "python",
            }
        )
    )
    return folder


def _execute(notebook: Any, cwd: Path, kernel_dir: Path, timeout_s: int) -> None:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir)], ensure_native_kernel=False)
    manager = AsyncKernelManager(kernel_name="medvol-test", kernel_spec_manager=specs)
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=timeout_s,
        resources={"metadata": {"path": str(cwd)}},
    )

    async def run() -> None:
        await asyncio.wait_for(client.async_execute(), timeout_s)

    asyncio.run(run())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_on_tiny_settings(path: Path, tmp_path: Path, kernel_dir: Path) -> None:
    notebook = _read(path)
    cell = _parameters_cell(notebook)
    settings = {"OUTPUT_DIR": str(tmp_path / "output"), **TINY[path.stem]}
    # The notebook's own values first, so that parameters not overridden keep their defaults.
    overrides = "\n".join(f"{name} = {value!r}" for name, value in settings.items())
    cell.source = f"{cell.source}\n\n# tiny settings for the test\n{overrides}\n"
    started = time.perf_counter()
    _execute(notebook, tmp_path, kernel_dir, TIMEOUT_S[path.stem])
    elapsed = time.perf_counter() - started
    errors = [
        output for code in _code_cells(notebook) for output in code.outputs if output.output_type == "error"
    ]
    assert not errors
    assert (tmp_path / "output").is_dir(), "the notebook wrote nothing into OUTPUT_DIR"
    print(f"{path.name}: {elapsed:.1f} s")
