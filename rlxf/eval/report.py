"""``report.html``: one self-contained page a person reads in a minute.

What it holds, top to bottom: the headline figures (reward before and after with standard errors, win
rate, KL, perplexity under the baseline, diversity, length), the naturalness table (sentiment-lexicon
word share, perplexity under the baseline and distinct-2 of the policy against the baseline's, each ratio
with its bound, the broken ones flagged and said in words), the training curves when the policy comes
from an rlxf run (reward and KL per step from its ``metrics.jsonl``, held-out points where it evaluated),
the proxy reward and the gold reward of the run's held-out evaluations against sqrt(KL) when it logged
both (:func:`proxy_vs_gold`, Gao et al. 2022), reward against KL (the trade-off RLHF makes: how much reward each nat of drift from the reference buys),
reward against held-out loss when the evaluation was given a held-out corpus (misalignment against
capability, for pre-trained models),
histograms of completion length and reward before and after, and a table of samples side by side.

Self-contained: the plots are PNGs drawn by matplotlib (Agg backend, no display) embedded as ``data:``
URIs, the style is inline; the page loads nothing else (no scripts, fonts or style sheets from anywhere),
so it can be mailed, archived or opened offline.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from rlxf.train.html import STYLE
from rlxf.train.html import card as _card
from rlxf.train.html import png as _png
from rlxf.train.html import series as _series


def training_curves(records: Sequence[dict[str, Any]], train_spec: str | None = None) -> str | None:
    """Reward (train batches and held-out evaluations) and KL per step, and the success rate of an
    environment run; ``None`` without such records."""
    import matplotlib.pyplot as plt

    steps, reward = _series(records, "reward/mean")
    if not steps:
        return None
    success_steps, success = _series(records, "env/success_rate")
    if success_steps:  # an environment run: its success rate per step beside reward and KL
        fig, (ax_r, ax_k, ax_s) = plt.subplots(1, 3, figsize=(14, 3.0))
        ax_s.plot(success_steps, success, color="#2a9d5b", lw=1.4, label="training episodes")
        eval_steps, eval_success = _series(records, "eval/success_rate")
        if eval_steps:
            ax_s.plot(eval_steps, eval_success, "o-", color="#d9822b", label="held-out")
        ax_s.set(xlabel="step", ylabel="success rate", title="success rate", ylim=(-0.02, 1.02))
        ax_s.legend(frameon=False, fontsize=8)
        ax_s.grid(alpha=0.3)
    else:
        fig, (ax_r, ax_k) = plt.subplots(1, 2, figsize=(10, 3.0))
    ax_r.plot(steps, reward, color="#3566c8", lw=1.4, label="training batches")
    eval_steps, eval_reward = _series(records, "eval/reward/mean")
    if eval_steps:
        ax_r.plot(eval_steps, eval_reward, "o-", color="#d9822b", label="held-out")
    ax_r.set(xlabel="step", ylabel="reward (mean)", title=f"training reward ({_short(train_spec or '?')})")
    ax_r.legend(frameon=False, fontsize=8)
    kl_steps, kl = _series(records, "kl")
    if kl_steps:
        ax_k.plot(kl_steps, kl, color="#7a3ec8", lw=1.4, label="training batches")
    eval_kl_steps, eval_kl = _series(records, "eval/kl")
    if eval_kl_steps:
        ax_k.plot(eval_kl_steps, eval_kl, "o-", color="#d9822b", label="held-out")
    ax_k.set(xlabel="step", ylabel="KL to reference (nats / completion)", title="KL")
    if kl_steps or eval_kl_steps:
        ax_k.legend(frameon=False, fontsize=8)
    for ax in (ax_r, ax_k):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def proxy_vs_gold_points(records: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """The held-out evaluations of an ``rlxf rl`` run that logged the proxy and the gold reward: one
    ``{"step", "kl", "proxy", "gold"}`` per ``metrics.jsonl`` record holding ``eval/reward/mean`` (the
    proxy, the reward the run trained on), ``eval/gold_reward/mean`` and ``eval/kl`` (nats per completion),
    in step order (the last record of a step wins); empty without such records."""
    keys = {"proxy": "eval/reward/mean", "gold": "eval/gold_reward/mean", "kl": "eval/kl"}
    by_step: dict[int, dict[str, float]] = {}
    for r in records:
        if "step" in r and all(r.get(k) is not None for k in keys.values()):
            by_step[int(r["step"])] = {
                "step": int(r["step"]),
                "kl": float(r["eval/kl"]),
                "proxy": float(r["eval/reward/mean"]),
                "gold": float(r["eval/gold_reward/mean"]),
            }
    return [by_step[step] for step in sorted(by_step)]


def proxy_gold_divergence(points: Sequence[dict[str, float]]) -> str:
    """Where the proxy stops tracking the gold, in a sentence, from :func:`proxy_vs_gold_points`.

    With the gold's highest evaluation at step ``p``: when ``p`` is the last evaluation, the gold is still
    rising there; when the proxy reaches above its value at ``p`` after it while the gold has fallen, the
    proxy stops tracking the gold after step ``p`` (overoptimisation, Gao et al. 2022); otherwise both
    fell after ``p``.
    """
    if not points:
        return "No held-out evaluation logged both rewards."
    if len(points) == 1:
        return f"One held-out evaluation only (step {points[0]['step']}): no curve to read."
    gold = [p["gold"] for p in points]
    proxy = [p["proxy"] for p in points]
    peak = max(range(len(points)), key=lambda i: (gold[i], -i))  # the first of the highest
    last = points[-1]
    if peak == len(points) - 1:
        return f"Gold still rising at the last evaluation (step {last['step']}): the proxy still tracks it."
    at_peak = points[peak]
    gold_drop = at_peak["gold"] - last["gold"]
    if gold_drop <= 0:
        return (
            f"Gold level at its highest from step {at_peak['step']} to the last evaluation (step "
            f"{last['step']}): not falling yet."
        )
    later = max(range(peak + 1, len(points)), key=lambda i: proxy[i])
    if proxy[later] > at_peak["proxy"]:
        return (
            f"The proxy stops tracking the gold after step {at_peak['step']}: from there the gold falls "
            f"{gold_drop:.3g} by step {last['step']} while the proxy rises "
            f"{proxy[later] - at_peak['proxy']:.3g} (to step {points[later]['step']}): overoptimisation."
        )
    return (
        f"Gold peaked at step {at_peak['step']} and falls {gold_drop:.3g} by step {last['step']}; the proxy "
        "did not rise after it either, so the two still move together."
    )


def proxy_vs_gold(points: Sequence[dict[str, float]]) -> str | None:
    """Gold and proxy reward of each held-out evaluation against d = sqrt(KL to the reference), as Gao et
    al. 2022 ("Scaling Laws for Reward Model Overoptimization", figure 1) plot them, each point labelled
    by its step; ``None`` without points.

    The two rewards are on their own scales (a learned reward model against the gold scorer), so each has
    its own y-axis in its own units, the gold on the left, the proxy on the right: read the directions,
    not the heights. A negative KL estimate (k1 over a few samples, near step 0) is drawn at d = 0.
    """
    import matplotlib.pyplot as plt

    if not points:
        return None
    d = [max(p["kl"], 0.0) ** 0.5 for p in points]
    fig, ax_gold = plt.subplots(figsize=(5.6, 3.4))
    ax_proxy = ax_gold.twinx()
    (gold_line,) = ax_gold.plot(d, [p["gold"] for p in points], "o-", color="#d9822b", lw=1.4, label="gold")
    (proxy_line,) = ax_proxy.plot(
        d, [p["proxy"] for p in points], "s--", color="#3566c8", lw=1.2, ms=4, label="proxy (trained on)"
    )
    for x, p in zip(d, points):
        ax_gold.annotate(
            str(p["step"]), (x, p["gold"]), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center"
        )
    ax_gold.set(xlabel="sqrt(KL to reference)  (KL: nats / completion)", ylabel="gold reward (held-out)")
    ax_gold.set_title("proxy vs gold reward", fontsize=10)
    ax_proxy.set_ylabel("proxy reward (held-out)")
    ax_gold.yaxis.label.set_color(gold_line.get_color())
    ax_proxy.yaxis.label.set_color(proxy_line.get_color())
    ax_gold.margins(y=0.15)  # room for the step labels
    ax_gold.grid(alpha=0.3)
    ax_gold.legend(handles=[gold_line, proxy_line], frameon=False, fontsize=8, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def _short(spec: str, width: int = 28) -> str:
    """A reward spec short enough for an axis label."""
    return spec if len(spec) <= width else "..." + spec[-(width - 3) :]


def reward_vs_kl(records: Sequence[dict[str, Any]], summary: dict[str, Any]) -> str | None:
    """Reward against KL: the run's training batches (coloured by step) and this evaluation's two points."""
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records if "kl" in r and "reward/mean" in r]
    kl = [r["kl"] for r in records if "kl" in r and "reward/mean" in r]
    reward = [r["reward/mean"] for r in records if "kl" in r and "reward/mean" in r]
    evaluated = summary.get("kl") and "baseline" in summary["reward"]
    if not steps and not evaluated:
        return None
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    train_spec = summary.get("train_reward_spec")
    same_scale = train_spec is None or train_spec == summary["reward_spec"]
    if steps:
        # Training batches were scored by the run's own reward; when that is not the gold reward (a learned
        # reward model, say) its scale differs, so the batches get their own axis on the right.
        if same_scale:
            points = ax.scatter(kl, reward, c=steps, cmap="viridis", s=14, label="training batches")
            fig.colorbar(points, ax=ax, label="step")
        else:
            train_ax = ax.twinx()
            train_ax.scatter(
                kl, reward, c=steps, cmap="viridis", s=14, label="training batches (dark -> light: step)"
            )
            train_ax.set_ylabel(f"training reward ({_short(train_spec)})")
            train_ax.legend(frameon=False, fontsize=8, loc="lower right")
    if evaluated:
        r = summary["reward"]
        ax.errorbar(
            [0.0],
            [r["baseline"]["mean"]],
            yerr=[r["baseline"]["se"]],
            fmt="s",
            color="#555",
            label="baseline",
        )
        ax.errorbar(
            [summary["kl"]["mean"]],
            [r["policy"]["mean"]],
            xerr=[summary["kl"]["se"]],
            yerr=[r["policy"]["se"]],
            fmt="D",
            color="#d9822b",
            label="policy (held-out)",
        )
    ax.set(
        xlabel="KL to reference (nats / completion)",
        ylabel=f"reward ({_short(summary['reward_spec'])})",
        title="reward vs KL",
    )
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    fig.tight_layout()
    return _png(fig)


def reward_vs_held_out(summary: dict[str, Any]) -> str | None:
    """Each model's mean reward (with its standard error) against its held-out loss: misalignment against
    capability, the two axes on which Korbak et al. 2023 compare pre-training objectives (figure 2)."""
    import matplotlib.pyplot as plt

    held_out = summary.get("held_out")
    if not held_out:
        return None
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for name, marker, colour in (("baseline", "s", "#555"), ("policy", "D", "#d9822b")):
        if name in held_out and name in summary["reward"]:
            r = summary["reward"][name]
            ax.errorbar(
                [held_out[name]["loss"]], [r["mean"]], yerr=[r["se"]], fmt=marker, color=colour, label=name
            )
    ax.set(
        xlabel="held-out loss (nats / token; lower: more capable)",
        ylabel=f"reward ({_short(summary['reward_spec'])})",
        title="reward vs held-out loss",
    )
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return _png(fig)


def histograms(values: dict[str, list[float]], xlabel: str, title: str) -> str | None:
    """Overlaid histograms of ``{label: values}`` (policy vs baseline) on shared bins."""
    import matplotlib.pyplot as plt

    present = {k: v for k, v in values.items() if v}
    if not present:
        return None
    low = min(min(v) for v in present.values())
    high = max(max(v) for v in present.values())
    bins = 20 if high > low else 1
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    colors = {"baseline": "#888", "policy": "#3566c8"}
    for label, v in present.items():
        ax.hist(
            v,
            bins=bins,
            range=(low, high if high > low else low + 1),
            alpha=0.55,
            label=label,
            color=colors.get(label),
        )
    ax.set(xlabel=xlabel, ylabel="completions", title=title)
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _cards(summary: dict[str, Any]) -> str:
    r = summary["reward"]
    cards = []
    policy = f"{r['policy']['mean']:.3f} ± {r['policy']['se']:.3f}"
    if "baseline" in r:
        tone = "good" if r["delta"] > 0 else "bad" if r["delta"] < 0 else ""
        cards.append(
            _card(
                f"reward ({summary['reward_spec']})",
                f"{r['baseline']['mean']:.3f} → {r['policy']['mean']:.3f}",
                f"change {r['delta']:+.3f} ± {r['delta_se']:.3f}; {r['share_improved']:.0%} of prompts improved",
                tone,
            )
        )
        w = summary["win_rate"]
        cards.append(
            _card("win rate over baseline", f"{w['value']:.1%}", f"± {w['se']:.1%}; ties {w['ties']:.0%}")
        )
    else:
        cards.append(_card(f"reward ({summary['reward_spec']})", policy))
    if "share_above" in r["policy"]:
        above, base = r["policy"]["share_above"], r.get("baseline", {}).get("share_above")
        cards.append(
            _card(
                f"completions with reward > {r['threshold']:g}",
                f"{base:.0%} → {above:.0%}" if base is not None else f"{above:.0%}",
                "share of all held-out completions",
                ("good" if above > base else "bad" if above < base else "") if base is not None else "",
            )
        )
    if summary.get("success_rate"):
        sr = summary["success_rate"]
        base_sr = sr.get("baseline")
        cards.append(
            _card(
                f"success rate ({summary['env']['name']})",
                f"{base_sr['mean']:.1%} → {sr['policy']['mean']:.1%}"
                if base_sr
                else f"{sr['policy']['mean']:.1%}",
                f"± {sr['policy']['se']:.1%} on {summary['env']['eval_episodes']} held-out tasks",
                (
                    "good"
                    if sr["policy"]["mean"] > base_sr["mean"]
                    else "bad"
                    if sr["policy"]["mean"] < base_sr["mean"]
                    else ""
                )
                if base_sr
                else "",
            )
        )
    if summary.get("kl"):
        k = summary["kl"]
        cards.append(
            _card("KL(policy ‖ baseline)", f"{k['mean']:.2f} nats", f"± {k['se']:.2f} per completion")
        )
    if summary.get("held_out"):
        h = summary["held_out"]
        cards.append(
            _card(
                "held-out loss (nats / token)",
                f"{h['policy']['loss']:.3f}",
                f"baseline {h['baseline']['loss']:.3f}" if "baseline" in h else "",
            )
        )
    if summary.get("perplexity_under_baseline"):
        p = summary["perplexity_under_baseline"]
        cards.append(
            _card(
                "perplexity under baseline",
                f"{p['policy']:.1f}",
                f"baseline's own samples {p['baseline']:.1f}",
            )
        )
    text = summary["text"]
    base = text.get("baseline")
    t = text["policy"]
    cards.append(
        _card("distinct-2", f"{t['distinct_2']:.3f}", f"baseline {base['distinct_2']:.3f}" if base else "")
    )
    cards.append(
        _card(
            "repetition (3-gram ×3)",
            f"{t['repetition']:.1%}",
            f"baseline {base['repetition']:.1%}" if base else "",
            "bad" if t["repetition"] > 0.1 else "",
        )
    )
    cards.append(
        _card(
            "length (tokens)",
            f"{t['length_mean']:.1f}",
            (f"baseline {base['length_mean']:.1f}; " if base else "") + f"truncated {t['truncated']:.0%}",
        )
    )
    return '<div class="cards">' + "".join(cards) + "</div>"


_NATURALNESS_ROWS = (
    ("lexicon_share", "sentiment-lexicon word share", "{:.1%}"),
    ("perplexity", "perplexity under the baseline", "{:.2f}"),
    ("distinct_2", "distinct-2", "{:.3f}"),
)


def _naturalness_table(block: dict[str, Any] | None) -> str:
    """The naturalness block as a table (policy, baseline, ratio, bound, ok / flagged; a flagged row on a
    red ground), its flags as sentences below; empty without a baseline."""
    if not block:
        return ""
    rows = []
    for key, name, fmt in _NATURALNESS_ROWS:
        entry = block.get(key)
        if entry is None:
            reason = block.get("unavailable", {}).get(key, "not measured")
            rows.append(
                f'<tr><td>{html.escape(name)}</td><td colspan="5">unavailable: {html.escape(reason)}</td></tr>'
            )
            continue
        if key == "lexicon_share":
            bound = f"≤ {entry['max_ratio']:g}×"
        elif key == "perplexity":
            bound = f"{entry['bounds'][0]:g}× to {entry['bounds'][1]:g}×"
        else:
            bound = f"≥ {entry['min_ratio']:g}×"
        ratio = f"{entry['ratio']:.2f}×" if entry["ratio"] is not None else "n/a"
        flagged = entry["flagged"]
        status = '<td class="bad"><b>⚑ flagged</b></td>' if flagged else '<td class="good">ok</td>'
        style = ' style="background:#fdecea"' if flagged else ""
        rows.append(
            f'<tr{style}><td>{html.escape(name)}</td><td class="r">{fmt.format(entry["policy"])}</td>'
            f'<td class="r">{fmt.format(entry["baseline"])}</td><td class="r">{ratio}</td>'
            f'<td class="r">{html.escape(bound)}</td>{status}</tr>'
        )
    head = (
        "<tr><th>figure</th><th>policy</th><th>baseline</th><th>ratio</th><th>bound</th><th>status</th></tr>"
    )
    flags = block.get("flags") or []
    said = (
        '<ul class="bad">' + "".join(f"<li>{html.escape(f)}</li>" for f in flags) + "</ul>"
        if flags
        else "<p>Every ratio within its bound.</p>"
    )
    return (
        "<h2 id=\"naturalness\">Naturalness</h2><p>The policy's text against its baseline's: "
        "stuffing sentiment words, drift in perplexity under the baseline (blander below, gibberish above), "
        f"loss of variety. Ratio: policy / baseline.</p><table>{head}{''.join(rows)}</table>{said}"
    )


def _samples_table(samples: Sequence[dict[str, Any]], num_examples: int) -> str:
    first = [s for s in samples if s.get("sample", 0) == 0][:num_examples]
    if not first:
        return ""
    with_baseline = "baseline" in first[0]
    head = "<tr><th>prompt</th>"
    head += "<th>baseline</th><th>reward</th>" if with_baseline else ""
    head += "<th>policy</th><th>reward</th>" + ("<th>KL</th>" if "kl" in first[0] else "") + "</tr>"
    rows = []
    for s in first:
        prompt = s["prompt"] if isinstance(s["prompt"], str) else s["prompt"][-1].get("content", "")
        cells = f'<td class="t">{html.escape(str(prompt))}</td>'
        if with_baseline:
            cells += f'<td class="t">{html.escape(s["baseline"])}</td><td class="r">{s["baseline_reward"]:+.3f}</td>'
        cells += f'<td class="t">{html.escape(s["policy"])}</td><td class="r">{s["policy_reward"]:+.3f}</td>'
        if "kl" in s:
            cells += f'<td class="r">{s["kl"]:.2f}</td>'
        rows.append(f"<tr>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def render_report(
    summary: dict[str, Any],
    samples: Sequence[dict[str, Any]],
    metrics: Sequence[dict[str, Any]],
    lengths: dict[str, list[float]],
    num_examples: int = 12,
) -> str:
    """The HTML of ``report.html`` (module docstring) from what :func:`rlxf.eval.evaluate.evaluate` found."""
    import matplotlib

    matplotlib.use("Agg")  # no display: draw into memory

    figures = []
    curves = training_curves(metrics, summary.get("train_reward_spec"))
    if curves:
        figures.append(
            (curves, f"Training run {summary.get('run')}: reward and KL per step (metrics.jsonl).", "wide")
        )
    points = summary.get("proxy_vs_gold") or []
    overoptimisation = proxy_vs_gold(points)
    if overoptimisation:
        caption = (
            "Proxy vs gold (Gao et al. 2022): the proxy reward the run trained on and the gold reward at each "
            "of its held-out evaluations, against sqrt(KL to the reference), labelled by step; each reward "
            "on its own axis, so compare directions, not heights. " + proxy_gold_divergence(points)
        )
        figures.append((overoptimisation, caption, ""))
    frontier = reward_vs_kl(metrics, summary)
    if frontier:
        figures.append(
            (frontier, "Reward against KL: each nat of drift from the reference, and what it bought.", "")
        )
    capability = reward_vs_held_out(summary)
    if capability:
        caption = f"Reward against held-out loss on {summary['held_out']['data']}: up and left is better."
        if summary.get("note"):  # tokenizers differ: a token is not the same unit on both sides
            caption += " The tokenizers differ, so the losses are in different units."
        figures.append((capability, caption, ""))
    length_plot = histograms(lengths, "completion length (tokens)", "length")
    if length_plot:
        figures.append((length_plot, "Completion lengths, before (baseline) and after (policy).", ""))
    rewards = {"policy": [s["policy_reward"] for s in samples]}
    if samples and "baseline_reward" in samples[0]:
        rewards = {"baseline": [s["baseline_reward"] for s in samples], **rewards}
    reward_plot = histograms(rewards, "reward", "reward per completion")
    if reward_plot:
        figures.append((reward_plot, "Rewards of every held-out completion, before and after.", ""))
    plots = "".join(
        f'<figure class="{css}"><img alt="{html.escape(caption)}" src="{uri}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for uri, caption, css in figures
    )
    title = "rlxf evaluation"
    who = f"policy {summary['policy']}" + (
        f" vs baseline {summary['baseline']}" if summary.get("baseline") else ""
    )
    source = (
        f"episodes of the {summary['env']['name']} environment's test split"
        if summary.get("env")
        else f"prompts from {summary['prompts']}"
    )
    meta = (
        f"{summary['num_prompts']} held-out {source} × {summary['samples_per_prompt']} "
        f"samples; precision {summary['precision']}; {summary['wall_time_s']:.0f} s"
    )
    note = f'<p class="sub">{html.escape(summary["note"])}</p>' if summary.get("note") else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{STYLE}</style></head>
<body><main>
<h1>{title}</h1><p class="sub">{html.escape(who)}<br>{html.escape(meta)}</p>{note}
{_cards(summary)}
{_naturalness_table(summary.get("naturalness"))}
<h2>Plots</h2><div class="plots">{plots}</div>
<h2>Samples (first sample of each prompt)</h2>
{_samples_table(samples, num_examples)}
</main></body></html>
"""


__all__ = ["proxy_gold_divergence", "proxy_vs_gold", "proxy_vs_gold_points", "render_report"]
