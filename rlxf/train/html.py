"""Pieces of the self-contained HTML reports (``rlxf eval``'s and ``rlxf selfplay``'s ``report.html``): the
page's inline style, matplotlib figures as ``data:`` PNGs, headline cards and per-step series read from a
run's ``metrics.jsonl`` records. Nothing here loads anything from outside the page.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
main { max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 10px; }
.sub { color: #5b6475; margin: 0 0 18px; word-break: break-all; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 10px; }
.card { background: #fff; border: 1px solid #dde1e8; border-radius: 8px; padding: 10px 12px; }
.card .k { color: #5b6475; font-size: 13px; overflow-wrap: anywhere; } .card .v { font-size: 20px; font-weight: 600; }
.card .d { font-size: 13px; color: #5b6475; }
.good { color: #157a3c; } .bad { color: #b3261e; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 12px; }
figure { margin: 0; background: #fff; border: 1px solid #dde1e8; border-radius: 8px; padding: 8px; }
figure.wide { grid-column: 1 / -1; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 13px; color: #5b6475; padding: 4px 4px 0; }
table { width: 100%; border-collapse: collapse; background: #fff; font-size: 14px; }
th, td { border: 1px solid #dde1e8; padding: 6px 8px; vertical-align: top; text-align: left; }
th { background: #eef0f4; } td.r { white-space: nowrap; text-align: right; font-variant-numeric: tabular-nums; }
td.t { white-space: pre-wrap; }
"""


def png(fig: Any) -> str:
    """A matplotlib figure as a ``data:image/png;base64`` URI (and the figure closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
    return [p[0] for p in points], [p[1] for p in points]


def card(key: str, value: str, detail: str = "", tone: str = "") -> str:
    cls = f"v {tone}".strip()
    return (
        f'<div class="card"><div class="k">{html.escape(key)}</div><div class="{cls}">{html.escape(value)}</div>'
        f'<div class="d">{html.escape(detail)}</div></div>'
    )


__all__ = ["STYLE", "card", "png", "series"]
