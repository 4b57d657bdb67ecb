"""MkDocs hook: links from a page to repository files outside ``docs/``.

A page may link to a file of the repository that is not documentation, e.g.
``[the config](../medvol/studies/recipes/hippocampus-unet-cpu.yaml)`` from ``docs/training.md``
(the link works when the Markdown is read on a code host). MkDocs cannot find such a
target among the documentation files and warns, which ``--strict`` turns into a
failure; its settings could only silence every missing-target warning, genuinely
broken links inside ``docs/`` included. This hook is narrower:

- a link that leaves ``docs/`` and names a file that exists in the repository is
  logged at INFO instead of WARNING, and the file is copied into the built site at
  its repository path, which is where the link, left as written, points (with
  MkDocs' directory URLs a page one folder deep in ``docs/`` is served one folder
  deeper, so ``../`` out of ``docs/`` lands at the root of the site);
- every other missing target stays a warning and fails the strict build: a broken
  link inside ``docs/``, a missing repository file, a folder, a path outside the
  repository.
"""

from __future__ import annotations

import logging
import posixpath
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mkdocs.config.defaults import MkDocsConfig

_MISSING = re.compile(
    r"^Doc file '(?P<page>[^']+)' contains (?:a link|an unrecognized relative link) '(?P<url>[^']+)'"
)


class RepositoryLinks(logging.Filter):
    """Demotes the warnings about links that leave ``docs/`` for an existing repository file."""

    def __init__(self, docs_dir: Path, root: Path) -> None:
        super().__init__()
        self.docs_dir = docs_dir
        self.root = root
        self.targets: set[Path] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        match = _MISSING.match(record.getMessage()) if record.levelno == logging.WARNING else None
        if match is None:
            return True
        target = self.repository_target(match["page"], match["url"])
        if target is not None:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = f"Doc file '{match['page']}' links to the repository file '{target}' (outside docs/)"
            record.args = None
            self.targets.add(target)
        return True

    def repository_target(self, page: str, url: str) -> Path | None:
        """The repository-relative path ``url`` names from ``page``, if it leaves docs/ and exists."""
        path = unquote(urlsplit(url).path)
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(page), path))
        if not resolved.startswith("../"):
            return None
        target = (self.docs_dir / resolved).resolve()
        if not target.is_file() or not target.is_relative_to(self.root):
            return None
        return target.relative_to(self.root)


_filter: RepositoryLinks | None = None


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    global _filter
    logger = logging.getLogger("mkdocs.structure.pages")
    if _filter is not None:
        logger.removeFilter(_filter)
    docs_dir = Path(config.docs_dir).resolve()
    _filter = RepositoryLinks(docs_dir, Path(config.config_file_path).resolve().parent)
    logger.addFilter(_filter)
    return config


def on_post_build(config: MkDocsConfig) -> None:
    """Copy the linked repository files into the site, at their repository paths."""
    if _filter is None:
        return
    site = Path(config.site_dir)
    for relative in sorted(_filter.targets):
        source, destination = _filter.root / relative, site / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
