"""``medvol reproduce``: seeds trained, evaluated once, aggregated, compared with published figures."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medvol.cli import main
from medvol.errors import MedvolError
from medvol.evaluation import evaluate_run
from medvol.evaluation.classification import choose_threshold, read_classification_cases
from medvol.metrics import accuracy
from medvol.reproduce import available_studies, load_study
from tests.shared_samples import copy_hippocampus_pairs, write_adrenal_subset

TINY_RESNET = [
    "train.epochs=1",
    "train.amp=none",
    "model.options.widths=4",
    "augment=null",
]


@pytest.fixture(scope="module")
def adrenal_tiny(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 training, 24 validation and 40 test cases of AdrenalMNIST3D, both classes in each."""
    path = tmp_path_factory.mktemp("adrenal") / "adrenal_tiny.npz"
    return write_adrenal_subset(shared_data, path, {"train": 64, "val": 24, "test": 40})


def test_every_study_loads_and_its_configs_parse() -> None:
    from medvol.config import load_config

    assert {"adrenalmnist3d", "adrenalmnist3d-64", "hippocampus"} <= set(available_studies())
    for name in available_studies():
        study = load_study(name)
        assert {"cpu", "full"} <= set(study.budgets)
        for config in study.budgets.values():
            load_config(config)
        rows = study.published["rows"]
        assert rows, name
        assert all(any(metric in row for metric in study.metrics) for row in rows), name
        assert all(row["source"] in study.published["sources"] for row in rows), name


def test_published_files_name_the_machine_folders_by_name() -> None:
    from medvol.reproduce.ledger import without_machine_paths

    text = '{"a": "/x/out/runs/r", "b": "/x/out-2/runs", "c": "/x/out", "d": "/x/out/data/f.npz"}'
    named = {"OUT": Path("/x/out"), "DATA": Path("/x/out/data")}
    assert without_machine_paths(text, named) == (
        '{"a": "OUT/runs/r", "b": "/x/out-2/runs", "c": "OUT", "d": "DATA/f.npz"}'
    )


def test_unknown_study_and_budget_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MedvolError, match="unknown study 'nope'; available: adrenalmnist3d"):
        load_study("nope")
    assert main(["reproduce", "adrenalmnist3d", "--budget", "huge", "--out", str(tmp_path)]) == 1


def test_classification_study_over_two_seeds_resumes_without_retraining(
    adrenal_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, published = tmp_path / "repro", tmp_path / "docs" / "results" / "adrenal"
    arguments = [
        "reproduce",
        "adrenalmnist3d",
        "--seeds",
        "2",
        "--out",
        str(out),
        "--publish",
        str(published),
    ]
    overrides = [f"data.root={adrenal_tiny}", *TINY_RESNET]
    for override in overrides:
        arguments += ["--set", override]
    assert main(arguments) == 0
    results = json.loads((out / "results.json").read_text())
    assert [run["seed"] for run in results["runs"]] == [0, 1]
    per_seed = [run["metrics"]["auc"]["estimate"] for run in results["runs"]]
    assert results["over_seeds"]["auc"]["mean"] == pytest.approx(np.mean(per_seed))
    assert results["over_seeds"]["auc"]["min"] == min(per_seed) <= 1.0
    for run in results["runs"]:
        folder = Path(run["run_dir"])
        summary = json.loads((folder / "reproduce-test" / "summary.json").read_text())
        assert summary["split"] == "test" and summary["n_cases"] == 40
        assert summary["metrics"]["auc"]["estimate"] == run["metrics"]["auc"]["estimate"]
        assert (
            summary["metrics"]["balanced_accuracy"]["estimate"]
            == run["metrics"]["balanced_accuracy"]["estimate"]
        )
        # The threshold is chosen on the same checkpoint's validation cases and applied to the test cases.
        validation = json.loads((folder / "reproduce-val" / "summary.json").read_text())
        assert validation["split"] == "val" and validation["epoch"] == summary["epoch"]
        _, val_targets, val_probabilities = read_classification_cases(folder / "reproduce-val" / "cases.csv")
        threshold = choose_threshold(val_targets, val_probabilities)
        assert run["val_threshold"]["threshold"] == threshold
        _, targets, probabilities = read_classification_cases(folder / "reproduce-test" / "cases.csv")
        at_threshold = run["metrics"]["accuracy_at_val_threshold"]["estimate"]
        assert at_threshold == pytest.approx(accuracy(targets, probabilities, threshold))
    assert results["baseline"]["class"] == 0 and results["baseline"]["metrics"]["auc"] == 0.5
    assert results["test_evaluations"]["count"] == 2
    table = (out / "results.md").read_text()
    assert "ResNet-18+ACS (published [1]) | 0.8390 | 0.7540 | — | — | — |" in table
    assert "Protocol changed by overrides" in table
    assert "Test split scored 2 times from this output folder" in table
    assert (
        "| majority class (class 0: 32 of 64 training cases), no model | 0.5000 | 0.5000 | 0.5000 |" in table
    )
    copied = sorted(p.relative_to(published).as_posix() for p in published.rglob("*") if p.is_file())
    assert "results.json" in copied and "test-evaluations.json" in copied
    assert "runs/adrenalmnist3d-cpu-seed1/reproduce-val/cases.csv" in copied
    assert "runs/adrenalmnist3d-cpu-seed0/reproduce-test/summary.json" in copied
    assert "configs/adrenalmnist3d-cpu-seed0.yaml" in copied
    assert not any(name.endswith(".pt") or "predictions" in name for name in copied)
    assert sum(p.stat().st_size for p in published.rglob("*")) < 200_000
    # What is committed names no folder of the machine that ran it, and is otherwise a byte-for-byte copy.
    cases = "runs/adrenalmnist3d-cpu-seed0/reproduce-test/cases.csv"
    assert (published / cases).read_bytes() == (out / cases).read_bytes()
    assert not [name for name in copied if str(out.resolve()) in (published / name).read_text()]
    assert json.loads((published / "results.json").read_text())["runs"][0]["run_dir"] == (
        "OUT/runs/adrenalmnist3d-cpu-seed0"
    )

    # Scoring the test split again outside reproduce is counted, not hidden.
    evaluate_run(results["runs"][0]["run_dir"], split="test")
    checkpoint = Path(results["runs"][0]["run_dir"]) / "checkpoints" / "last.pt"
    before = checkpoint.stat().st_mtime_ns
    capsys.readouterr()
    assert main(arguments) == 0
    shown = capsys.readouterr().out
    assert "already evaluated" in shown
    assert "reproduce adrenalmnist3d: 2/2 seeds (100%)" in shown  # the closing progress line
    assert checkpoint.stat().st_mtime_ns == before
    record = json.loads((out / "test-evaluations.json").read_text())["evaluations"]
    assert [(e["seed"], e["folder"]) for e in record] == [
        (0, "reproduce-test"),
        (1, "reproduce-test"),
        (0, "evaluation-test"),
    ]
    assert "Test split scored 3 times" in (out / "results.md").read_text()


def test_interrupted_seed_is_evaluated_after_training_finishes(adrenal_tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "repro"
    arguments = ["reproduce", "adrenalmnist3d", "--seeds", "1", "--out", str(out)]
    for override in [f"data.root={adrenal_tiny}", *TINY_RESNET]:
        arguments += ["--set", override]
    assert main(arguments) == 0
    evaluation = out / "runs" / "adrenalmnist3d-cpu-seed0" / "reproduce-test"
    shutil.rmtree(evaluation)  # as if stopped between training and evaluation
    assert main(arguments) == 0
    assert (evaluation / "summary.json").is_file()


def test_a_changed_recipe_is_not_mixed_with_earlier_runs(
    adrenal_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "repro"
    arguments = ["reproduce", "adrenalmnist3d", "--seeds", "1", "--out", str(out)]
    for override in [f"data.root={adrenal_tiny}", *TINY_RESNET]:
        arguments += ["--set", override]
    assert main(arguments) == 0
    capsys.readouterr()
    assert main([*arguments, "--set", "data.prefetch=false"]) == 0  # same weights: the same recipe
    assert "already evaluated" in capsys.readouterr().out
    assert main([*arguments, "--set", "optimizer.lr=0.01"]) == 1
    error = capsys.readouterr().err
    assert "adrenalmnist3d-cpu-seed0" in error and "another recipe (changed since: optimizer)" in error


def test_published_runs_are_reused_without_training_and_give_the_same_table(
    adrenal_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import medvol.engine.train

    published = tmp_path / "docs" / "results" / "adrenal"
    arguments = ["reproduce", "adrenalmnist3d", "--seeds", "1"]
    for override in [f"data.root={adrenal_tiny}", *TINY_RESNET]:
        arguments += ["--set", override]
    assert main([*arguments, "--out", str(tmp_path / "first"), "--publish", str(published)]) == 0
    first = json.loads((tmp_path / "first" / "results.json").read_text())
    run_files = published / "runs" / "adrenalmnist3d-cpu-seed0"
    assert {"environment.json", "fingerprint.json", "metrics.jsonl"} <= {p.name for p in run_files.iterdir()}

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a published run was trained again")

    monkeypatch.setattr(medvol.engine.train, "train", no_training)
    again = tmp_path / "again"
    republished = tmp_path / "republished"
    assert (
        main([*arguments, "--out", str(again), "--reuse", str(published), "--publish", str(republished)]) == 0
    )
    assert "taken from" in capsys.readouterr().out
    files = sorted(p.relative_to(published) for p in published.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(republished) for p in republished.rglob("*") if p.is_file())
    for name in files:  # published again unchanged (results.json adds where the runs came from)
        assert (
            name == Path("results.json")
            or (published / name).read_bytes() == (republished / name).read_bytes()
        )
    results = json.loads((again / "results.json").read_text())
    for key in ("over_seeds", "baseline", "environment"):
        assert results[key] == first[key], key
    (run,) = results["runs"]
    assert run["run_dir"] == str((again / "runs" / "adrenalmnist3d-cpu-seed0").absolute())
    assert run["reused_from"] == str(published)
    assert {k: v for k, v in run.items() if k not in ("run_dir", "reused_from", "session_seconds")} == {
        k: v for k, v in first["runs"][0].items() if k not in ("run_dir", "session_seconds")
    }
    assert results["test_evaluations"]["count"] == 1  # the published scoring, counted once
    # A run published before its per-epoch record and environment were keeps its published figures.
    for name in ("metrics.jsonl", "environment.json"):
        (run_files / name).unlink()
    older = tmp_path / "older"
    assert main([*arguments, "--out", str(older), "--reuse", str(published)]) == 0
    results = json.loads((older / "results.json").read_text())
    assert results["runs"][0]["train_seconds"] == first["runs"][0]["train_seconds"] > 0
    assert results["environment"] == first["environment"]
    # Another recipe is refused before anything is copied.
    capsys.readouterr()
    changed = tmp_path / "changed"
    assert (
        main([*arguments, "--out", str(changed), "--reuse", str(published), "--set", "optimizer.lr=0.01"])
        == 1
    )
    error = capsys.readouterr().err
    assert "adrenalmnist3d-cpu-seed0.yaml" in error and "another recipe (changed since: optimizer)" in error
    assert not (changed / "runs" / "adrenalmnist3d-cpu-seed0").exists()
    (published / "results.json").write_text("{")
    assert main([*arguments, "--out", str(tmp_path / "broken"), "--reuse", str(published)]) == 1
    assert "results.json" in capsys.readouterr().err


def test_the_committed_hippocampus_runs_are_the_shipped_recipe_and_give_their_table(tmp_path: Path) -> None:
    """Each run of docs/results/hippocampus-cpu-5fold can be reused (``--reuse``) with today's
    recipe, and its committed files give the committed figures again."""
    from medvol.config import dump_config, load_config
    from medvol.engine.run_folder import RunFolder
    from medvol.io.atomic import json_safe
    from medvol.reproduce import cross_validation
    from medvol.reproduce.ledger import restore_run
    from medvol.reproduce.runner import _recipe_changes, _with_data_root
    from medvol.reproduce.scores import seed_entry

    published = Path(__file__).resolve().parents[1] / "docs" / "results" / "hippocampus-cpu-5fold"
    study = load_study("hippocampus")
    places = {"OUT": tmp_path, "DATA": tmp_path / "data", "MEDVOL": Path(__file__).resolve().parents[1]}
    runs = json.loads((published / "results.json").read_text())["runs"]
    assert sorted({run["fold"] for run in runs}) == [0, 1, 2, 3, 4]
    for entry in runs:
        run = RunFolder(tmp_path / entry["folder"])
        assert restore_run(published, run, places) is not None
        config = load_config(
            study.budgets["cpu"], [f"data.split.fold={entry['fold']}", f"train.seed={entry['seed']}"]
        )
        config = _with_data_root(config, places["DATA"] / config.data.root)
        assert _recipe_changes(run, dump_config(config)) == [], run.name
        summary = run.reproduction("val").read_summary()
        assert summary["cases_root"] == str((places["DATA"] / "msd-hippocampus").absolute())
        again = seed_entry(study, entry["seed"], run, run.reproduction("val"))
        assert again["metrics"] == entry["metrics"] and again["cases"] == entry["cases"], run.name
        entry["run_dir"] = str(run.path)
    derived = json_safe(cross_validation(study.metrics, runs, 5))  # None, not NaN, as results.json holds
    committed = json.loads((published / "results.json").read_text())
    assert derived["per_seed"] == committed["cross_validation"]["per_seed"]
    assert derived["per_fold"] == committed["cross_validation"]["per_fold"]
    assert derived["over_seeds"] == committed["over_seeds"]


TINY_UNET = (
    "data.num_workers=0",
    "data.patch_size=[32,32,32]",
    "train.epochs=1",
    "train.val_every=1",
    "model.options.base_filters=4",
    "model.options.num_levels=3",
)


def test_segmentation_study_scores_the_validation_fold(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy_hippocampus_pairs(shared_data, tmp_path / "hippo", ("001", "004", "006", "007", "008"))
    out = tmp_path / "repro"
    arguments = ["reproduce", "hippocampus", "--seeds", "1", "--out", str(out)]
    for override in (f"data.root={data}", *TINY_UNET):
        arguments += ["--set", override]
    assert main(arguments) == 0
    results = json.loads((out / "results.json").read_text())
    summary = json.loads((Path(results["runs"][0]["run_dir"]) / "reproduce-val" / "summary.json").read_text())
    assert summary["split"] == "val" and summary["checkpoint"] == "last" and summary["n_cases"] == 1
    assert summary["tta"] is True and summary["tta_flip_axes"] == [0]  # left-right only, as trained
    assert set(results["over_seeds"]) == {"dice_1", "dice_2"}
    table = (out / "results.md").read_text()
    assert "nnU-Net 3d_fullres (5-fold CV) (published [1]) | 0.8975 | 0.8807" in table
    assert "| | Dice anterior (1) | Dice posterior (2) |" in table
    assert (
        "Scored: the validation cases, once per seed (1 seed), checkpoint last, "
        "averaged over the flips the recipe trains with (flip TTA)"
    ) in table
    assert "baseline" in results and results["baseline"] is None
    assert not (out / "test-evaluations.json").exists()
    # A seed scored without flip TTA is not mixed into a table that says it used it.
    summary_path = out / "runs" / "hippocampus-cpu-seed0" / "reproduce-val" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["tta"] = False
    summary_path.write_text(json.dumps(summary))
    capsys.readouterr()
    assert main(arguments) == 1
    error = capsys.readouterr().err
    assert str(summary_path) in error and "evaluated without flip TTA" in error and "remove" in error
    summary.update(tta=True, largest_component=True)  # the study keeps every component
    summary_path.write_text(json.dumps(summary))
    assert main(arguments) == 1
    error = capsys.readouterr().err
    assert "evaluated with the largest component kept" in error and "evaluate.largest_component" in error


# Seven cases in nnU-Net's five folds: folds 0 and 1 validate on 2 cases each, folds 2 to 4 on 1.
FOLD_CASES = ("001", "003", "004", "006", "007", "008", "011")


@pytest.fixture(scope="module")
def two_folds(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``--folds 2``, then ``--folds 0,2`` into the same folder (fold 2 resumed), one seed each.

    Returns the output folder, the arguments (without ``--folds``), what the second command
    printed, and fold 2's checkpoint time before it.
    """
    root = tmp_path_factory.mktemp("folds")
    data = copy_hippocampus_pairs(shared_data, root / "hippo", FOLD_CASES)
    out = root / "repro"
    arguments = ["reproduce", "hippocampus", "--seeds", "1", "--out", str(out)]
    for override in (f"data.root={data}", *TINY_UNET):
        arguments += ["--set", override]
    assert main([*arguments, "--folds", "2"]) == 0
    checkpoint = out / "runs" / "hippocampus-cpu-fold2-seed0" / "checkpoints" / "last.pt"
    before = checkpoint.stat().st_mtime_ns
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        assert main([*arguments, "--folds", "0,2"]) == 0
    return {"out": out, "arguments": arguments, "shown": shown.getvalue(), "fold2_mtime": before}


def _per_case(evaluation: Path, column: str) -> dict[str, float]:
    """``{case_id: value}`` of class ``column`` (``"1"``) from an evaluation's ``cases.csv``."""
    with open(evaluation / "cases.csv", newline="") as handle:
        return {
            row["case_id"]: float(row["dice"]) for row in csv.DictReader(handle) if row["class"] == column
        }


def test_two_folds_give_a_row_each_and_the_mean_pooled_over_their_cases(two_folds: dict) -> None:
    from medvol.data.splits import nnunet_folds
    from medvol.reproduce import format_results

    out = two_folds["out"]
    results = json.loads((out / "results.json").read_text())
    assert [(run["fold"], run["seed"]) for run in results["runs"]] == [(0, 0), (2, 0)]
    expected = nnunet_folds([f"hippocampus_{case}" for case in FOLD_CASES])
    cv = results["cross_validation"]
    assert (cv["folds"], cv["n_folds"], cv["cases"]) == ([0, 2], 5, 3)
    for run, fold in zip(results["runs"], cv["per_fold"], strict=True):
        evaluation = Path(run["run_dir"]) / "reproduce-val"
        assert sorted(_per_case(evaluation, "1")) == sorted(expected[run["fold"]]["val"])
        summary = json.loads((evaluation / "summary.json").read_text())
        assert fold["over_seeds"]["dice_1"]["mean"] == summary["metrics"]["1"]["dice"]["mean"]
    for metric, column in (("dice_1", "1"), ("dice_2", "2")):
        folds = [_per_case(Path(run["run_dir"]) / "reproduce-val", column) for run in results["runs"]]
        pooled = [value for fold in folds for value in fold.values()]
        assert results["over_seeds"][metric]["mean"] == pytest.approx(np.mean(pooled))
        # 2 cases and 1 case: the pooled mean weights each case, not each fold.
        assert results["over_seeds"][metric]["mean"] != pytest.approx(
            np.mean([np.mean(list(fold.values())) for fold in folds])
        )
    table = (out / "results.md").read_text()
    assert (
        "| medvol, 2 of 5 folds (folds 0, 2; not a 5-fold mean): per-case mean over the 3 pooled "
        "validation cases, mean over 1 seed (no interval) |" in table
    )
    assert "| fold 0 (2 cases) [95% bootstrap interval over cases] |" in table
    assert "| fold 2 (1 case) [95% bootstrap interval over cases] |" in table
    assert "| medvol, lowest – highest of the 2 folds (fold means over seeds) |" in table
    assert "Scored: the validation cases of each fold, once per fold and seed (2 folds × 1 seed)" in table
    assert "nan" not in table and "medvol, 5-fold" not in table
    assert table == format_results(results)  # what docs/generate.py renders from results.json


def test_folds_resume_without_training_or_evaluating_again(
    two_folds: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    out, arguments = two_folds["out"], two_folds["arguments"]
    assert "[hippocampus fold 2 seed 0] already evaluated" in two_folds["shown"]
    assert "[hippocampus fold 0 seed 0] training" in two_folds["shown"]
    checkpoints = [
        out / "runs" / f"hippocampus-cpu-fold{fold}-seed0" / "checkpoints" / "last.pt" for fold in (0, 2)
    ]
    assert checkpoints[1].stat().st_mtime_ns == two_folds["fold2_mtime"]
    before = [path.stat().st_mtime_ns for path in checkpoints]
    capsys.readouterr()
    assert main([*arguments, "--folds", "0,2"]) == 0
    shown = capsys.readouterr().out
    assert "[hippocampus fold 0 seed 0] already evaluated" in shown
    assert "[hippocampus fold 2 seed 0] already evaluated" in shown
    assert "seed 0] training" not in shown and "reproduce hippocampus: 2/2 runs (100%)" in shown
    assert [path.stat().st_mtime_ns for path in checkpoints] == before


def test_a_recipe_without_folds_refuses_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "repro"
    assert main(["reproduce", "adrenalmnist3d", "--folds", "0-4", "--out", str(out)]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "adrenalmnist3d-resnet18-cpu.yaml: --folds needs a recipe split into folds" in error
    assert "split.method 'official'" in error
    assert not out.exists()


@pytest.mark.parametrize(
    ("folds", "message"),
    [
        ("a", "--folds 'a': give fold numbers from 0, e.g. 0-4 or 0,2 (not 'a')"),
        ("-1", "--folds '-1': give fold numbers from 0"),
        ("0,", "--folds '0,': give fold numbers from 0, e.g. 0-4 or 0,2 (not '')"),
        ("4-1", "--folds '4-1': the range 4-1 runs backwards (1-4?)"),
        ("0-2,2", "--folds '0-2,2': fold(s) 2 given twice"),
        ("3-5", "hippocampus-unet-cpu.yaml: --folds names fold(s) 5, but the split has 5 folds (0-4)"),
    ],
)
def test_bad_folds_are_named_in_one_line(
    folds: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "repro"
    assert main(["reproduce", "hippocampus", "--folds", folds, "--out", str(out)]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error
    assert not out.exists()
