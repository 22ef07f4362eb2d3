"""The report table of a pipeline's eval stages (examples/ilql-sentiment.yaml): one row per stage folder
holding an ``rlxf eval`` summary.json, in the order the pipeline ran them.

    .venv/bin/python examples/ilql_table.py runs/ilql-sentiment

Columns: the policy (and the ILQL beta it decoded with), its held-out mean reward (+- standard error over
prompts), the baseline's (the start model), the difference, the win rate over the baseline, KL(policy ||
baseline) in nats per completion, and the perplexity of the policy's completions under the start model
(the baseline's own completions' beside it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(name: str, summary: dict) -> str:
    reward = summary["reward"]
    ilql = summary.get("ilql")
    decoding = "" if ilql is None else f" (beta {ilql['beta']:g})"
    cells = [f"{name}{decoding}", f"{reward['policy']['mean']:+.3f} +- {reward['policy']['se']:.3f}"]
    if "baseline" in reward:
        cells += [f"{reward['baseline']['mean']:+.3f}", f"{reward['delta']:+.3f}"]
        cells.append(f"{summary['win_rate']['value']:.3f}")
    else:
        cells += ["", "", ""]
    kl = summary.get("kl")
    cells.append(f"{kl['mean']:.2f}" if kl else "")
    perplexity = summary.get("perplexity_under_baseline")
    cells.append(f"{perplexity['policy']:.2f} ({perplexity['baseline']:.2f})" if perplexity else "")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    root = Path(argv[0])
    order = []
    pipeline = root / "pipeline.yaml"
    if pipeline.is_file():
        import yaml

        order = [stage["name"] for stage in yaml.safe_load(pipeline.read_text()).get("stages", [])]
    rank = {name: i for i, name in enumerate(order)}
    folders = sorted(
        (p.parent for p in root.glob("*/summary.json")), key=lambda p: (rank.get(p.name, len(rank)), p.name)
    )
    print(
        "| policy | held-out reward | start model | delta | win rate | KL | perplexity under the start model |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text())
        if "reward" in summary and "policy" in summary.get("reward", {}):
            print(row(folder.name, summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
