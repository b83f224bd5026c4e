"""A single self-contained HTML report: text, tables, embedded figures, JSON blocks.

Images are embedded as base64 data URIs so the report can be mailed or
archived as one file. No template engine: every piece of user text goes
through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from metalsm.atomic import write_text
from metalsm.errors import MetalsmInputError

__all__ = [
    "Section",
    "render_report",
    "write_report",
]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       max-width: 1200px; margin: 2em auto; padding: 0 1.5em; color: #222; line-height: 1.5; }
h1 { border-bottom: 3px solid #b2182b; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
nav ul { columns: 2; list-style: none; padding-left: 0; }
nav a, a { color: #2166ac; text-decoration: none; }
.table-wrap { overflow-x: auto; max-width: 100%; margin: .8em 1.5em 1.2em 0;
              display: inline-block; vertical-align: top; }
table { border-collapse: collapse; font-size: .88em; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: right; }
th { vertical-align: bottom; max-width: 11em; }
td { white-space: nowrap; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 1em 1.5em 0; display: inline-block; vertical-align: top;
         max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, caption { color: #555; font-size: .9em; caption-side: bottom; padding-top: .3em; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: .85em;
      border-radius: 4px; max-height: 40em; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; }
footer { margin-top: 3em; color: #888; font-size: .85em; }
"""


@dataclass
class Section:
    """One report section, rendered in order: text, images, tables, preformatted blocks.

    ``text``: paragraphs (a string is split on blank lines); ``**bold**``,
    ``` `code` ``` and ``- `` bullet lines are understood. ``tables``: DataFrames
    or (caption, DataFrame). ``images``: PNG paths or (caption, path).
    ``preformatted``: dicts/lists (shown as JSON) or strings, or (caption, obj).
    """

    heading: str
    text: str | Sequence[str] = ()
    tables: Sequence[pd.DataFrame | tuple[str, pd.DataFrame]] = field(default_factory=list)
    images: Sequence[str | Path | tuple[str, str | Path]] = field(default_factory=list)
    preformatted: Sequence[Any] = field(default_factory=list)


def _inline(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _paragraphs(text: str | Sequence[str]) -> list[str]:
    blocks = re.split(r"\n\s*\n", text) if isinstance(text, str) else list(text)
    out = []
    for block in blocks:
        lines = [ln.strip() for ln in block.strip().splitlines() if ln.strip()]
        if not lines:
            continue
        if all(ln.startswith(("- ", "* ")) for ln in lines):
            items = "".join(f"<li>{_inline(ln[2:])}</li>" for ln in lines)
            out.append(f"<ul>{items}</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(lines))}</p>")
    return out


def _captioned(item: Any) -> tuple[str | None, Any]:
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return item
    return None, item


def _format_number(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e6 else f"{value:,.0f}"


def _table(caption: str | None, frame: pd.DataFrame) -> str:
    index = not isinstance(frame.index, pd.RangeIndex)
    body = frame.to_html(
        index=index, border=0, escape=True, na_rep="–", float_format=_format_number
    )
    if caption:
        body = body.replace(">", f"><caption>{html.escape(caption)}</caption>", 1)
    # a table wider than the page scrolls sideways instead of running off it
    return f'<div class="table-wrap">{body}</div>'


def _image(caption: str | None, path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise MetalsmInputError(f"report image not found: {path}")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(caption or path.stem)
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">{cap}</figure>'


def _pre(caption: str | None, obj: Any) -> str:
    text = obj if isinstance(obj, str) else json.dumps(obj, indent=2, default=_json_default)
    cap = f"<p><em>{html.escape(caption)}</em></p>" if caption else ""
    return f"{cap}<pre>{html.escape(text)}</pre>"


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _anchor(i: int, heading: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")
    return f"s{i}-{slug}" if slug else f"s{i}"


def render_report(*, title: str, sections: Sequence[Section], subtitle: str | None = None) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    from metalsm import __version__

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if subtitle:
        parts.append(f"<p>{_inline(subtitle)}</p>")
    if len(sections) > 1:
        links = "".join(
            f'<li><a href="#{_anchor(i, s.heading)}">{html.escape(s.heading)}</a></li>'
            for i, s in enumerate(sections)
        )
        parts.append(f"<nav><ul>{links}</ul></nav>")
    for i, section in enumerate(sections):
        parts.append(f'<section id="{_anchor(i, section.heading)}">')
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        parts.extend(_paragraphs(section.text))
        parts.extend(_image(*_captioned(item)) for item in section.images)
        parts.extend(_table(*_captioned(item)) for item in section.tables)
        parts.extend(_pre(*_captioned(item)) for item in section.preformatted)
        parts.append("</section>")
    parts.append(f"<footer>Generated by metalsm {html.escape(__version__)}.</footer>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(
    path: str | Path, *, title: str, sections: Sequence[Section], subtitle: str | None = None
) -> Path:
    """Write a self-contained HTML report (atomic): figures embedded, nothing to copy along."""
    return write_text(path, render_report(title=title, sections=sections, subtitle=subtitle))
