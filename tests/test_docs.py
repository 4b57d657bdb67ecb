"""The documentation site: generated pages are fresh, the strict build passes, CITATION.cff is valid."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

import medvol

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HAS_MKDOCS = importlib.util.find_spec("mkdocs") is not None
NEEDS_MKDOCS = pytest.mark.skipif(
    not HAS_MKDOCS, reason='mkdocs is not installed (pip install -e ".[dev]"); `make test` builds the docs'
)


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    """``docs/generate.py``, imported from its file (``docs/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("medvol_docs_generate", DOCS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nav_pages(entries: Any) -> list[str]:
    """Every page file named in an mkdocs ``nav`` tree."""
    if isinstance(entries, str):
        return [entries]
    if isinstance(entries, list):
        return [page for entry in entries for page in nav_pages(entry)]
    if isinstance(entries, dict):
        return [page for value in entries.values() for page in nav_pages(value)]
    return []


def test_generated_docs_are_fresh(generator: ModuleType) -> None:
    stale = generator.stale_files(generator.generated_files())
    names = ", ".join(str(path.relative_to(ROOT)) for path in stale)
    assert not stale, f"out of date: {names}; run `{generator.COMMAND}` and commit the result"


def test_every_verb_has_a_page(generator: ModuleType) -> None:
    verbs = [verb for verb in generator.help_texts() if verb]
    assert {"info", "convert", "index", "plan", "train", "evaluate", "predict", "report"} <= set(verbs)
    missing = [verb for verb in verbs if not (DOCS / "cli" / f"{verb}.md").is_file()]
    assert not missing, f"no page for: {missing}; run `{generator.COMMAND}` and fill in the stub"
    pages = {path.stem for path in (DOCS / "cli").glob("*.md")} - {"overview"}
    assert not pages - set(verbs), f"pages for verbs the CLI does not have: {sorted(pages - set(verbs))}"


def test_results_tables_are_made_from_committed_results(
    generator: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block of docs/results.md is the table of the results.json it names; prose stays as written."""
    from medvol.reproduce import format_results
    from tests.test_reproduce_tables import _results

    (tmp_path / "results" / "study-cpu").mkdir(parents=True)
    (tmp_path / "results" / "study-cpu" / "results.json").write_text(json.dumps(_results()))
    page = tmp_path / "results.md"
    marker = (
        "<!-- BEGIN GENERATED: results/study-cpu/results.json, by hand -->\nold table\n<!-- END GENERATED -->"
    )
    page.write_text(f"# Results\n\nProse before.\n\n{marker}\n\nProse after.\n")
    monkeypatch.setattr(generator, "DOCS", tmp_path)
    monkeypatch.setattr(generator, "RESULTS_PAGE", page)
    text = generator.results_page()[page]
    assert text.startswith(
        "# Results\n\nProse before.\n\n<!-- BEGIN GENERATED: results/study-cpu/results.json"
    )
    assert format_results(_results(), title=False) + generator.END_MARKER + "\n\nProse after.\n" in text
    assert "old table" not in text and generator.results_page()[page] == text
    page.write_text(marker.replace("study-cpu", "missing-cpu"))
    with pytest.raises(SystemExit, match=r"names results/missing-cpu/results\.json, which is not in docs/"):
        generator.results_page()


def test_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = nav_pages(config["nav"])
    pages = sorted(path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md"))
    assert not [page for page in listed if page not in pages], "mkdocs.yml lists pages that do not exist"
    unlisted = [page for page in pages if page not in listed]
    assert not unlisted, f"add these pages to the nav in mkdocs.yml: {unlisted}"


def test_config_reference_describes_every_key(generator: ModuleType) -> None:
    text, _ = generator.config_reference()
    undescribed = re.findall(r"^\| `(\w+)` \| [^|]+ \| [^|]+ \|  \|$", text, flags=re.MULTILINE)
    assert not undescribed, (
        f"config keys without a description: {undescribed}; add a `# comment` after the field in "
        f"medvol/config.py (or an Attributes:/Args: docstring entry), then run `{generator.COMMAND}`"
    )


def test_docstring_sections_are_parsed(generator: ModuleType) -> None:
    class Example:
        """Summary line.

        More text.

        Attributes:
            alpha: first line
                continued.
            beta (int): second.

        Returns:
            nothing.
        """

    assert generator.docstring_entries(Example, "Attributes") == {
        "alpha": "first line continued.",
        "beta": "second.",
    }
    assert generator.paragraphs(Example) == ["Summary line.", "More text."]
    assert generator.describe_key("``None`` keeps medvol.x.y") == "`null` keeps `medvol.x.y`."


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=config.parent,
    )


@NEEDS_MKDOCS
def test_site_builds_strictly(tmp_path: Path) -> None:
    result = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "cli" / "train" / "index.html").is_file()


@NEEDS_MKDOCS
def test_links_out_of_docs_must_name_repository_files(tmp_path: Path) -> None:
    """docs/hooks.py allows a link from docs/ to an existing repository file, and only that."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "x.yaml").write_text("a: 1\n")
    validation = "{not_found: warn, anchors: warn, unrecognized_links: warn}"
    (tmp_path / "mkdocs.yml").write_text(
        f"site_name: t\nhooks: [{DOCS / 'hooks.py'}]\nvalidation: {validation}\n"
    )
    page = tmp_path / "docs" / "index.md"

    page.write_text("# T\n\n[config](../configs/x.yaml)\n")
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "configs" / "x.yaml").read_text() == "a: 1\n"

    for broken in ("../configs/missing.yaml", "missing.md", "../configs/", "#nowhere"):
        page.write_text(f"# T\n\n[config](../configs/x.yaml) [broken]({broken})\n")
        result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
        assert result.returncode != 0, f"{broken} was accepted"
        assert "Aborted with 1 warnings in strict mode" in result.stdout + result.stderr


def test_citation_file_is_valid_cff() -> None:
    citation_module = pytest.importorskip("cffconvert.citation", reason="cffconvert is a dev dependency")
    text = (ROOT / "CITATION.cff").read_text()
    citation = citation_module.Citation(text)
    assert citation.cffversion == "1.2.0"
    citation.validate()  # raises jsonschema.ValidationError naming the problem
    assert yaml.safe_load(text)["version"] == medvol.__version__, "CITATION.cff version != medvol's"


def test_citation_validation_catches_errors() -> None:
    citation_module = pytest.importorskip("cffconvert.citation", reason="cffconvert is a dev dependency")
    jsonschema = pytest.importorskip("jsonschema")
    text = (ROOT / "CITATION.cff").read_text()
    without_authors = re.sub(r"^authors:\n(  .*\n)+", "", text, flags=re.MULTILINE)
    assert without_authors != text
    with pytest.raises(jsonschema.ValidationError):
        citation_module.Citation(without_authors).validate()
