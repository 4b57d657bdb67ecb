"""``medvol report`` on real trained and evaluated runs (shared with tests/test_evaluate.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from matplotlib.image import imread

from medvol.cli import main
from medvol.report import write_report
from tests.test_evaluate import classifier_run, copy_run, evaluated_run, segmenter_run

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
