"""One self-contained HTML file: explorer.css and a page's scripts inlined, the document as JSON
in a script tag. No network: nothing is loaded from anywhere, so it opens from disk. Two pages
share the views: the explorer of one model, and the comparison of two (`vitlens compare`)."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from vitlens.io import atomic_path

HERE = Path(__file__).parent
# Each page's scripts, concatenated in this order into one: the shared context, one file per
# view, then the page's entry (explorer.js, compare.js), which builds the views and draws them.
VIEWS = ("core.js", "gallery.js", "image.js", "head.js", "model.js", "class_means.js")
SCRIPTS = {"explorer": (*VIEWS, "training.js", "facts.js", "explorer.js"),
           "compare": (*VIEWS, "facts.js", "compare_views.js", "compare.js")}
TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style></head>
<body><div id="app">loading…</div>
<script type="application/json" id="vitlens-data">{data}</script>
<script>{js}</script>
</body></html>
"""


def finite(x: Any) -> Any:
    """`x` with NaN and infinities as None: JSON has no NaN, and one NaN (a diverged epoch's
    loss) would make JSON.parse reject the whole page."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return x


def render(doc: dict[str, Any]) -> str:
    """The page of an explorer document (vitlens.report.data.document) or of a compare one
    (vitlens.report.compare.document, meta.kind "compare")."""
    # "</" would end the script element early; "<\\/" is the same JSON string.
    data = json.dumps(finite(doc), separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    page = "compare" if doc["meta"]["kind"] == "compare" else "explorer"
    return TEMPLATE.format(title=html.escape(doc["meta"]["title"]), data=data,
                           css=(HERE / "explorer.css").read_text(),
                           js="\n".join((HERE / name).read_text() for name in SCRIPTS[page]))


def write_explorer(path: str | Path, doc: dict[str, Any]) -> None:
    """Write the page atomically: a reader never sees half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(render(doc), encoding="utf-8")
