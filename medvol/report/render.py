"""Document blocks of a report, rendered to HTML or Markdown, and how numbers are written."""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """Plain text; ```code``` spans are kept in both formats."""

    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    """A PNG in the report folder, by file name."""

    name: str
    caption: str


Block = Heading | Paragraph | Bullets | Table | Image

CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; overflow-wrap: break-word; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; box-sizing: border-box; border: 1px solid #ddd; }
figcaption { font-size: 0.9rem; color: #555; }
code { background: #f4f4f4; padding: 0 0.2rem; overflow-wrap: anywhere; }  /* long paths wrap */
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.2rem; }
@media print {
  body { max-width: none; margin: 0; }
  figure, tr { break-inside: avoid; }
  h2, h3 { break-after: avoid; }
}
"""


def render_html(blocks: Sequence[Block], title: str) -> str:
    """A self-contained HTML page (inline CSS; images by relative path)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head>",
        "<body>",
    ]
    parts += [_block_html(block) for block in blocks]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _block_html(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{_inline_html(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{_inline_html(block.text)}</p>"
    if isinstance(block, Bullets):
        items = "".join(f"<li>{_inline_html(item)}</li>" for item in block.items)
        return f"<ul>{items}</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_inline_html(cell)}</th>" for cell in block.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{_inline_html(cell)}</td>" for cell in row) + "</tr>" for row in block.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    name = html.escape(block.name, quote=True)
    caption = _inline_html(block.caption)
    return (
        f'<figure><img src="{name}" alt="{html.escape(block.caption, quote=True)}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def render_markdown(blocks: Sequence[Block]) -> str:
    """The same document as GitHub-flavoured Markdown (images by relative path)."""
    return "\n\n".join(_block_markdown(block) for block in blocks) + "\n"


def _block_markdown(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {block.text}"
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, Table):
        lines = [
            "| " + " | ".join(_cell_md(c) for c in block.header) + " |",
            "|" + "|".join("---" for _ in block.header) + "|",
        ]
        lines += ["| " + " | ".join(_cell_md(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    return f"![{block.caption}]({block.name})\n\n*{block.caption}*"


def _inline_html(text: str) -> str:
    escaped = html.escape(text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def _cell_md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# -- numbers and values as text


def mean_interval(entry: dict[str, Any], with_counts: bool = False) -> str:
    """``mean [low, high]`` of a segmentation summary entry, optionally ``(n=…, u=…)``."""
    text = interval(entry.get("mean"), entry.get("low"), entry.get("high"))
    if with_counts:
        text += f" (n={entry.get('n', 0)}, u={entry.get('n_undefined', 0)})"
    return text


def interval(estimate: Any, low: Any, high: Any, digits: int = 3) -> str:
    """``estimate [low, high]``; the estimate alone without finite bounds; ``undefined`` without one."""
    if not finite(estimate):
        return "undefined"
    if not (finite(low) and finite(high)):
        return fmt(estimate, digits)
    return f"{fmt(estimate, digits)} [{fmt(low, digits)}, {fmt(high, digits)}]"


def fmt(value: Any, digits: int = 3) -> str:
    """A value as text: floats to ``digits`` decimals, None and NaN as ``undefined``."""
    if isinstance(value, bool) or value is None:
        return "undefined" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "undefined"
    return str(value)


def finite(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def shape_text(shape: Any) -> str:
    """``28×28×28`` from a list or tuple of sizes; ``?`` otherwise."""
    return "×".join(str(s) for s in shape) if isinstance(shape, list | tuple) else "?"


def kv(mapping: Any) -> str:
    """``key: value, …`` of a mapping (nested values as JSON); empty for none."""
    if not mapping:
        return ""
    if not isinstance(mapping, dict):
        return str(mapping)
    return ", ".join(f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in mapping.items())
