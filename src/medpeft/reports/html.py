"""Self-contained HTML: one page with inline CSS and images embedded as base64 PNG."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2327;
       background: #f4f6f8; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.2em; margin: 28px 0 10px; border-bottom: 2px solid #d0d7de; padding-bottom: 4px; }
p.lead { color: #57606a; margin: 0 0 12px; }
section { background: white; border-radius: 8px; padding: 14px 18px; margin: 14px 0;
          box-shadow: 0 1px 3px rgba(0, 0, 0, 0.08); overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.92em; margin: 6px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e1e4e8; text-align: right; white-space: nowrap; }
.row { display: flex; flex-wrap: wrap; gap: 14px; }
.row > section { flex: 1 1 300px; margin: 0; }
th { background: #f0f3f6; }
th:first-child, td:first-child { text-align: left; }
.facts td { text-align: left; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.figures figure { flex: 1 1 420px; max-width: 560px; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e4e8; border-radius: 4px; }
.figures figure img { width: 100%; }
.thumbs { display: flex; flex-wrap: wrap; gap: 12px; }
.thumb { width: 120px; font-size: 12px; }
.thumb .nothumb { width: 96px; height: 96px; background: #f0f0f0; }
figcaption { font-size: 0.85em; color: #57606a; margin-top: 4px; max-width: 560px; }
.note { font-size: 0.88em; color: #57606a; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 0.85em; }
a { color: #0969da; }
"""


def escape(value: object) -> str:
    """``value`` as HTML text."""
    return html.escape(str(value))


def number(value: float | None, digits: int = 3) -> str:
    """A float with ``digits`` decimals, ``-`` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def table(header: Sequence[str] | None, rows: Sequence[Sequence[object]], css: str = "") -> str:
    """An HTML table (no header row if ``header`` is None); cells are escaped unless `Raw`."""

    def cell(value: object, tag: str) -> str:
        text = value.text if isinstance(value, Raw) else escape(value)
        return f"<{tag}>{text}</{tag}>"

    head = "<thead><tr>" + "".join(cell(h, "th") for h in header) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(cell(v, "td") for v in row) + "</tr>" for row in rows)
    attr = f' class="{css}"' if css else ""
    return f"<table{attr}>{head}<tbody>{body}</tbody></table>"


class Raw:
    """HTML that a table cell holds as is (a link)."""

    def __init__(self, text: str) -> None:
        self.text = text


def link(href: str, text: str) -> Raw:
    return Raw(f'<a href="{escape(href)}">{escape(text)}</a>')


def figure(path: Path, caption: str) -> str:
    """A PNG embedded as base64, with a caption; its file name is the alt text."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(Path(path).name)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def section(title: str, *parts: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{''.join(parts)}</section>"


def row(*sections: str) -> str:
    """Sections side by side (wrapping on narrow screens)."""
    return f'<div class="row">{"".join(sections)}</div>'


def page(title: str, lead: str, body: Sequence[str]) -> str:
    """A complete HTML document."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f'<body><main><h1>{escape(title)}</h1><p class="lead">{escape(lead)}</p>'
        + "".join(body)
        + "</main></body></html>\n"
    )
