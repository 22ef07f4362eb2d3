"""The report of a pipeline's eval stages (examples/ilql-sentiment.yaml): one row per stage folder holding
an ``rlxf eval`` summary.json, in the order the pipeline ran them, printed as a markdown table and written
with a plot of held-out reward against perplexity under the start model to ``RUN/report.html``.

    .venv/bin/python examples/ilql_table.py runs/ilql-sentiment

Columns: the policy (and the ILQL beta it decoded with), its held-out mean reward (+- standard error over
prompts), the baseline's (the start model), the difference, the win rate over the baseline, KL(policy ||
baseline) in nats per completion, and the perplexity of the policy's completions under the start model
(the baseline's own completions' beside it).
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path

HEADER = [
    "policy",
    "held-out reward",
    "start model",
    "delta",
    "win rate",
    "KL",
    "perplexity under the start model",
]


def cells(name: str, summary: dict) -> list[str]:
    reward = summary["reward"]
    ilql = summary.get("ilql")
    decoding = "" if ilql is None else f" (beta {ilql['beta']:g})"
    row = [f"{name}{decoding}", f"{reward['policy']['mean']:+.3f} +- {reward['policy']['se']:.3f}"]
    if "baseline" in reward:
        row += [f"{reward['baseline']['mean']:+.3f}", f"{reward['delta']:+.3f}"]
        row.append(f"{summary['win_rate']['value']:.3f}")
    else:
        row += ["", "", ""]
    kl = summary.get("kl")
    row.append(f"{kl['mean']:.2f}" if kl else "")
    perplexity = summary.get("perplexity_under_baseline")
    row.append(f"{perplexity['policy']:.2f} ({perplexity['baseline']:.2f})" if perplexity else "")
    return row


def eval_summaries(root: Path) -> list[tuple[Path, dict]]:
    """The eval stage folders under ``root`` and their summaries, in the pipeline's order (then by name)."""
    order = []
    pipeline = root / "pipeline.yaml"
    if pipeline.is_file():
        import yaml

        order = [stage["name"] for stage in yaml.safe_load(pipeline.read_text()).get("stages", [])]
    rank = {name: i for i, name in enumerate(order)}
    folders = sorted(
        (p.parent for p in root.glob("*/summary.json")), key=lambda p: (rank.get(p.name, len(rank)), p.name)
    )
    found = [(f, json.loads((f / "summary.json").read_text())) for f in folders]
    return [(f, summary) for f, summary in found if "policy" in summary.get("reward", {})]


def report_html(root: Path, rows: list[list[str]], summaries: list[dict]) -> str:
    """A self-contained page: the table, and each policy's reward against its perplexity ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlxf.train.html import STYLE, png

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row, summary in zip(rows, summaries):
        perplexity = summary.get("perplexity_under_baseline")
        if perplexity:
            ratio = perplexity["policy"] / perplexity["baseline"]
            ax.scatter(ratio, summary["reward"]["policy"]["mean"])
            ax.annotate(row[0], (ratio, summary["reward"]["policy"]["mean"]), fontsize=8)
    ax.set_xlabel("perplexity under the start model / the start model's own")
    ax.set_ylabel("held-out mean reward")
    ax.axvline(1.5, color="#b3261e", linestyle=":", linewidth=1)
    table = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in HEADER) + "</tr>"
    for row in rows:
        table += "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
    return (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(root.name)}</title><style>{STYLE}</style>"
        f"<main><h1>Held-out evaluation: {html.escape(str(root))}</h1>"
        "<p class='sub'>Each row is one eval stage against the start model (held-out openings).</p>"
        f"<table>{table}</table><h2>Reward and drift</h2><figure><img src='{png(fig)}'><figcaption>"
        "held-out reward against the perplexity ratio; the dotted line is the 1.5x bound</figcaption></figure>"
        "</main>"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    root = Path(argv[0])
    found = eval_summaries(root)
    summaries = [summary for _, summary in found]
    rows = [cells(folder.name, summary) for folder, summary in found]
    print("| " + " | ".join(HEADER) + " |")
    print("|" + " --- |" * len(HEADER))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    (root / "report.html").write_text(report_html(root, rows, summaries), encoding="utf-8")
    print(f"report: {root / 'report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
