"""``report.html`` of an ``rlxf selfplay`` run: its last held-out figures as cards, both roles' rewards and
the attack success rate per step (from ``metrics.jsonl``), and the cross-play heatmap of the saved
prompters against the saved responders. Self-contained, as ``rlxf eval``'s report (:mod:`rlxf.train.html`).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from rlxf.train.html import STYLE
from rlxf.train.html import card as _card
from rlxf.train.html import png as _png
from rlxf.train.html import series as _series


def selfplay_curves(records: Sequence[dict[str, Any]]) -> str | None:
    """Both roles' rewards and the attack success rate per step (training rounds, held-out points)."""
    import matplotlib.pyplot as plt

    steps, _ = _series(records, "attack_success_rate")
    if not steps:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.0))
    for ax, key, title in (
        (axes[0], "prompter/reward", "prompter reward"),
        (axes[1], "responder/reward", "responder reward"),
        (axes[2], "attack_success_rate", "attack success rate"),
    ):
        x, y = _series(records, key)
        ax.plot(x, y, color="#3566c8", lw=1.4, label="training rounds")
        ex, ey = _series(records, f"eval/{key}")
        if ex:
            ax.plot(ex, ey, "o-", color="#d9822b", label="held-out")
        ax.set(xlabel="step", title=title)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return _png(fig)


def crossplay_heatmap(crossplay: dict[str, Any]) -> str | None:
    """The attack success rate of every saved prompter (rows) against every saved responder (columns)."""
    import matplotlib.pyplot as plt

    matrix = crossplay.get("attack_success_rate")
    if not matrix:
        return None
    steps = crossplay["steps"]
    fig, ax = plt.subplots(figsize=(1.2 * len(steps) + 2.5, 1.0 * len(steps) + 1.5))
    image = ax.imshow(matrix, cmap="Reds", vmin=0.0, vmax=1.0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value > 0.6 else "black")
    ax.set_xticks(range(len(steps)), [f"R@{s}" for s in steps])
    ax.set_yticks(range(len(steps)), [f"P@{s}" for s in steps])
    ax.set(xlabel="responder (saved at step)", ylabel="prompter (saved at step)", title="cross-play ASR")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _png(fig)


def render_selfplay_report(
    summary: dict[str, Any], records: Sequence[dict[str, Any]], crossplay: dict[str, Any]
) -> str:
    """``report.html`` of an ``rlxf selfplay`` run: its final held-out figures, both roles' curves and the
    cross-play heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    metrics = summary.get("metrics", {})
    cards = "".join(
        _card(name, f"{metrics[f'eval/{name}']:.3f}")
        for name in (
            "attack_success_rate",
            "prompter/reward",
            "responder/reward",
            "distinct_2",
            "self_bleu",
            "benign_sentiment",
            "benign_perplexity",
        )  # fmt: skip
        if f"eval/{name}" in metrics
    )
    figures = [
        (selfplay_curves(records), "Rewards of both roles and the attack success rate per step.", "wide"),
        (crossplay_heatmap(crossplay), "Cross-play: each saved prompter against each saved responder.", ""),
    ]
    plots = "".join(
        f'<figure class="{css}"><img alt="{html.escape(caption)}" src="{uri}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for uri, caption, css in figures
        if uri
    )
    title = "rlxf self-play"
    who = f"{summary.get('game')} ({summary.get('schedule')}), run {summary.get('run')}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{STYLE}</style></head>
<body><main>
<h1>{title}</h1><p class="sub">{html.escape(who)}</p>
<div class="cards">{cards}</div>
<h2>Plots</h2><div class="plots">{plots}</div>
</main></body></html>
"""


__all__ = ["crossplay_heatmap", "render_selfplay_report", "selfplay_curves"]
