"""``medvol report`` on real trained and evaluated runs (shared with tests/test_evaluate.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from medvol.cli import main
from medvol.engine.run_folder import EvaluationFolder, RunFolder
from medvol.errors import MedvolError
from medvol.evaluation import evaluate_run
from medvol.evaluation.overlays import OverlaySlices, overlay_slices, read_overlays, save_overlays
from medvol.report import write_report
from medvol.volume import Volume
from tests.test_evaluate import (
    classifier_run,
    copy_run,
    evaluated_run,
    hippocampus_folder,
    segmenter_run,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def classifier(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained classifier run with ``evaluation-val`` (read-only; copy before writing)."""
    return evaluated_run(classifier_run(shared_data, tmp_path_factory), tmp_path_factory)


@pytest.fixture(scope="module")
def segmenter(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained segmenter run with ``evaluation-val`` (read-only; copy before writing)."""
    return evaluated_run(segmenter_run(shared_data, tmp_path_factory), tmp_path_factory)


def linked_images(text: str, pattern: str) -> list[str]:
    return re.findall(pattern, text)


def assert_valid_pngs(folder: Path, names: list[str]) -> None:
    assert names, "the report links no figure"
    for name in names:
        path = folder / name
        assert path.is_file(), name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        height, width = imread(path).shape[:2]
        assert height > 100 and width > 100, name


def test_classifier_report_html(classifier: Path, tmp_path: Path) -> None:
    run_dir = copy_run(classifier, tmp_path)
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report" / "report.html").read_text()
    images = linked_images(html, r'<img src="([^"]+)"')
    assert_valid_pngs(run_dir / "report", images)
    assert {"learning_curves.png", "roc-val.png", "calibration-val.png", "confusion-val.png"} <= set(images)
    assert "<h2>Model card</h2>" in html and "<h3>Intended use</h3>" in html
    assert "Not a medical device" in html and "<h3>Limitations</h3>" in html
    summary = json.loads((run_dir / "evaluation-val" / "summary.json").read_text())
    auc = summary["metrics"]["auc"]
    assert f"{auc['estimate']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]" in html
    assert "Not evaluated yet" not in html
    assert "Only validation cases were evaluated" in html


def test_report_before_any_evaluation_says_so(classifier: Path, tmp_path: Path) -> None:
    run_dir = copy_run(classifier, tmp_path)
    shutil.rmtree(run_dir / "evaluation-val")
    path = write_report(run_dir, tmp_path / "out", "md")
    text = path.read_text()
    assert path == tmp_path / "out" / "report.md"
    assert "Not evaluated yet — run `medvol evaluate" in text
    assert "AUC" not in text  # no metric is claimed without an evaluation
    assert_valid_pngs(tmp_path / "out", linked_images(text, r"!\[[^\]]*\]\(([^)]+)\)"))


def test_segmenter_report_html_and_markdown(segmenter: Path, tmp_path: Path) -> None:
    run_dir = copy_run(segmenter, tmp_path)
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report" / "report.html").read_text()
    images = linked_images(html, r'<img src="([^"]+)"')
    assert_valid_pngs(run_dir / "report", images)
    assert {"dice-val.png", "overlay-val-best.png", "overlay-val-worst.png"} <= set(images)
    assert "<h2>Model card</h2>" in html and "Dice per case" in html
    val = json.loads((run_dir / "split.json").read_text())["val"]
    assert all(case_id in html for case_id in val)

    assert main(["report", str(run_dir), "--format", "md", "--out", str(tmp_path / "md")]) == 0
    markdown = (tmp_path / "md" / "report.md").read_text()
    assert "## Model card" in markdown and "### Limitations" in markdown
    assert_valid_pngs(tmp_path / "md", linked_images(markdown, r"!\[[^\]]*\]\(([^)]+)\)"))
    summary = json.loads((run_dir / "evaluation-val" / "summary.json").read_text())
    dice = summary["metrics"]["1"]["dice"]
    assert f"{dice['mean']:.3f} [{dice['low']:.3f}, {dice['high']:.3f}]" in markdown


def test_report_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nowhere")]) == 1
    assert "nowhere: run folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 1
    assert "config.yaml is missing" in capsys.readouterr().err


def test_segmenter_report_from_a_copied_run_without_its_data(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Evaluate on a private copy of the data, move the run away, delete the data: the report is whole."""
    data = Path(shutil.copytree(hippocampus_folder(shared_data, tmp_path_factory), tmp_path / "data"))
    run_dir = copy_run(segmenter_run(shared_data, tmp_path_factory), tmp_path / "trained")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["data"]["root"] = str(data)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    evaluate_run(run_dir, n_resamples=50, device="cpu")
    moved = Path(shutil.move(run_dir, tmp_path / "elsewhere" / run_dir.name))
    shutil.rmtree(data)
    shutil.rmtree(tmp_path / "trained")

    html = write_report(moved).read_text()
    images = linked_images(html, r'<img src="([^"]+)"')
    assert_valid_pngs(moved / "report", images)
    assert {"dice-val.png", "overlay-val-best.png", "overlay-val-worst.png"} <= set(images)
    assert "overlay not drawn" not in html and "could not" not in html


def test_report_on_an_evaluation_without_overlays_says_to_rerun_evaluate(
    segmenter: Path, tmp_path: Path
) -> None:
    run_dir = copy_run(segmenter, tmp_path)
    overlays = RunFolder(run_dir).evaluation("val").overlays
    assert overlays.is_file()
    overlays.unlink()
    html = write_report(run_dir).read_text()
    images = linked_images(html, r'<img src="([^"]+)"')
    assert "dice-val.png" in images and not any(name.startswith("overlay-") for name in images)
    assert html.count("overlay not drawn") == 2
    assert "rerun <code>medvol evaluate</code>" in html


def _volume(array: np.ndarray, spacing: tuple[float, float, float]) -> Volume:
    return Volume(array[None], np.diag([*spacing, 1.0]), {})


def test_overlay_slices_choice_and_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 7, 9)).astype(np.float32)
    truth = np.zeros((6, 7, 9), dtype=np.int16)
    truth[1:3, 2:5, 2:7] = 1  # extent along z (largest spacing): 2..6, middle 4
    truth[4, 4, 3] = 2
    predicted = np.zeros_like(truth)
    predicted[1:3, 2:4, 3:6] = 1
    predicted[0, 0, 0] = 3  # a class only in the prediction, off the slice: still in the legend
    spacing = (0.8, 0.8, 2.5)
    slices = overlay_slices(_volume(image, spacing), _volume(truth, spacing), _volume(predicted, spacing))
    assert (slices.axis, slices.index, slices.pixel_mm, slices.classes) == (2, 4, (0.8, 0.8), (1, 2, 3))
    np.testing.assert_array_equal(slices.image, image[:, :, 4].T)
    np.testing.assert_array_equal(slices.label, truth[:, :, 4].T)
    np.testing.assert_array_equal(slices.prediction, predicted[:, :, 4].T)

    empty = np.zeros_like(truth)
    equal = overlay_slices(_volume(image, (1, 1, 1)), _volume(empty, (1, 1, 1)), _volume(empty, (1, 1, 1)))
    assert (equal.axis, equal.index, equal.classes) == (2, 4, ())  # last axis, its middle

    folder = EvaluationFolder(tmp_path / "evaluation-val")
    save_overlays(folder, {"a": slices, "b": equal})
    with np.load(folder.overlays, allow_pickle=False) as data:
        assert list(data["case_ids"]) == ["a", "b"]
    back = read_overlays(folder, ["a"])
    assert list(back) == ["a"]
    read = back["a"]
    assert isinstance(read, OverlaySlices)
    assert (read.axis, read.index, read.pixel_mm, read.classes) == (2, 4, (0.8, 0.8), (1, 2, 3))
    np.testing.assert_array_equal(read.image, slices.image)
    np.testing.assert_array_equal(read.prediction, slices.prediction)
    assert set(read_overlays(folder)) == {"a", "b"}
    with pytest.raises(MedvolError, match="no overlay slices of case c"):
        read_overlays(folder, ["c"])
    folder.overlays.write_bytes(b"not a zip")
    with pytest.raises(MedvolError, match="cannot read the overlay slices"):
        read_overlays(folder)
    folder.overlays.unlink()
    with pytest.raises(MedvolError, match="rerun `medvol evaluate`"):
        read_overlays(folder)
    with pytest.raises(MedvolError, match="differ in shape"):
        overlay_slices(_volume(image, spacing), _volume(truth[:5], spacing), _volume(predicted, spacing))


@pytest.mark.parametrize(
    ("orientation", "axis", "letters"),
    [
        ("RAS", 2, ("L", "R", "P", "A")),  # axial, x to the right, y up
        ("LPS", 2, ("R", "L", "A", "P")),  # the same slice of an LPS grid: radiological view
        ("RAS", 0, ("P", "A", "I", "S")),  # sagittal: y to the right, z up
    ],
)
def test_overlay_edges_carry_anatomical_letters(
    orientation: str, axis: int, letters: tuple[str, ...]
) -> None:
    from medvol.io.geometry import lps_to_ras

    codes = {"RAS": np.eye(4), "LPS": lps_to_ras(np.eye(4))}
    volume = Volume(np.zeros((1, 4, 5, 6), np.float32), codes[orientation])
    assert volume.orientation == orientation
    mask = Volume(np.ones((1, 4, 5, 6), np.uint8), volume.affine)
    slices = overlay_slices(volume, mask, mask)
    slices = OverlaySlices(**{**slices.__dict__, "axis": axis})
    assert slices.edge_letters == letters
    assert OverlaySlices(**{**slices.__dict__, "orientation": ""}).edge_letters is None  # older files
