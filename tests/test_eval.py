"""`rlxf eval` (rlxf/eval/evaluate.py) and its report (rlxf/eval/report.py) on a tiny random model.

* standard errors by hand;
* a model compared with itself: the same seed gives the same samples, so the reward change is 0, every
  comparison is a tie (win rate 1/2) and KL(A || A) from the engine's log-probs and a forward pass is 0;
* after a short `rlxf rl` run: eval of the run folder finds the starting model as its baseline by itself,
  writes summary.json, samples.jsonl and report.html; the report's plots come from the run's metrics;
* the report renders in headless Chromium with no request but the page itself; a screenshot is saved;
* bad input (no prompts, a missing baseline) stops before any file is written;
* naturalness: the block and its flags from figures given by hand, the bounds' checks, the summary's lines;
* proxy vs gold: the points and the sentence on where the proxy stops tracking the gold by hand, and an
  evaluation with a synthetic run folder's metrics.jsonl puts them in summary.json and the figure (and a
  flagged naturalness table) in report.html.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from rlxf.algos.rl import RLConfig, rl
from rlxf.cli import main
from rlxf.config import load_config
from rlxf.eval.evaluate import (
    EvalConfig,
    describe_summary,
    evaluate,
    mean_se,
    naturalness,
    per_prompt,
)
from rlxf.eval.report import proxy_gold_divergence, proxy_vs_gold_points, render_report
from rlxf.train.metrics import read_metrics

REWARD_FILE = """
def score(prompts, completions):
    return [c.count("e") / max(len(c), 1) for c in completions]
"""

PROMPTS = ["The movie was", "Our trip to the coast", "The restaurant served", "This book is", "The cast was"]


@pytest.fixture
def files(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    reward = tmp_path / "reward_fn.py"
    reward.write_text(REWARD_FILE)
    return prompts, f"fn:{reward}:score"


def eval_config(model: str, prompts: Path, reward: str, out: Path, **extra) -> EvalConfig:
    base = {
        "model": {"name_or_path": model},
        "prompts": str(prompts) if str(prompts) != "." else "",
        "reward": reward,
        "out": str(out),
        "sampling": {"n": 2, "max_new_tokens": 6, "batch_size": 16},
        "precision": "fp32",
    }
    base.update(extra)
    return load_config(EvalConfig, overrides=base)


def test_mean_and_standard_error_by_hand():
    # values 1, 2, 3, 6: mean 3; sample variance ((4 + 1 + 0 + 9) / 3) = 14/3; se = sqrt(14/3 / 4)
    mean, se = mean_se([1.0, 2.0, 3.0, 6.0])
    assert mean == 3.0
    assert se == pytest.approx(math.sqrt(14 / 12))
    assert mean_se([5.0]) == (5.0, 0.0)
    assert per_prompt([1.0, 3.0, 2.0, 2.0], 2) == [2.0, 2.0]


def test_a_model_against_itself_changes_nothing(files, tmp_path, tiny_model_dir):
    prompts, reward = files
    cfg = eval_config(str(tiny_model_dir), prompts, reward, tmp_path / "self", baseline=str(tiny_model_dir))
    result = evaluate(cfg)
    s = result.summary
    assert s["reward"]["delta"] == pytest.approx(0.0, abs=1e-9)
    assert s["reward"]["share_improved"] == 0.5  # every prompt ties
    assert s["win_rate"]["value"] == 0.5 and s["win_rate"]["ties"] == 1.0
    assert abs(s["kl"]["mean"]) < 1e-3  # engine log-probs vs a forward pass of the same weights
    assert s["perplexity_under_baseline"]["policy"] == pytest.approx(
        s["perplexity_under_baseline"]["baseline"], rel=1e-3
    )
    assert len(result.samples) == len(PROMPTS) * 2
    for name in ("summary.json", "samples.jsonl", "report.html", "config.yaml"):
        assert (tmp_path / "self" / name).is_file(), name


def test_share_of_completions_above_a_reward_threshold(files, tmp_path, tiny_model_dir):
    prompts, reward = files
    out = tmp_path / "above"
    cfg = eval_config(
        str(tiny_model_dir), prompts, reward, out, baseline=str(tiny_model_dir), reward_threshold=0.05
    )
    result = evaluate(cfg)
    r = result.summary["reward"]
    policy_rewards = [row["policy_reward"] for row in result.samples]
    baseline_rewards = [row["baseline_reward"] for row in result.samples]
    assert 0.0 < sum(x > 0.05 for x in policy_rewards) < len(policy_rewards)  # the threshold splits them
    assert r["threshold"] == 0.05
    assert r["policy"]["share_above"] == sum(x > 0.05 for x in policy_rewards) / len(policy_rewards)
    assert r["baseline"]["share_above"] == sum(x > 0.05 for x in baseline_rewards) / len(baseline_rewards)
    assert f"reward above 0.05: policy {r['policy']['share_above']:.0%}" in describe_summary(result.summary)
    assert "completions with reward &gt; 0.05" in (out / "report.html").read_text()
    # Unset: not reported.
    plain = evaluate(eval_config(str(tiny_model_dir), prompts, reward, tmp_path / "plain"))
    assert (
        "share_above" not in plain.summary["reward"]["policy"] and "threshold" not in plain.summary["reward"]
    )


def test_a_pairwise_judge_decides_the_win_rate(files, tmp_path, tiny_model_dir):
    """--win-judge: each pair in both orders. Against itself every pair holds two equal completions, so the
    two orders are the same input and the combined probability is exactly 1/2: all ties."""
    prompts, reward = files
    rubric = tmp_path / "rubric.txt"  # short: the tiny judge reads 256 tokens at most
    rubric.write_text("Which continues {prompt} better? A: {response_a} B: {response_b}")
    cfg = eval_config(
        str(tiny_model_dir),
        prompts,
        reward,
        tmp_path / "judged",
        baseline=str(tiny_model_dir),
        win_judge=str(tiny_model_dir),
        win_judge_template=str(rubric),
    )
    w = evaluate(cfg).summary["win_rate"]
    assert w["judge"] == f"pairwise:{tiny_model_dir}"
    assert w["value"] == 0.5 and w["ties"] == 1.0 and w["p_policy_mean"] == pytest.approx(0.5)
    assert 0.0 <= w["position_consistency"] <= 1.0


def test_eval_of_an_rl_run_finds_its_baseline_and_plots_its_metrics(files, tmp_path, tiny_model_dir):
    prompts, reward = files
    run = tmp_path / "run"
    rl_cfg = load_config(
        RLConfig,
        overrides={
            "model": {"name_or_path": str(tiny_model_dir)},
            "prompts": str(prompts),
            "reward": reward,
            "out": str(run),
            "estimator": "grpo",
            "sampling": {"n": 2, "max_new_tokens": 6, "batch_size": 8},
            "prompts_per_step": 4,
            "num_steps": 3,
            "micro_batch_size": 4,
            "train": {"learning_rate": 5e-2, "precision": "fp32"},
        },
    )
    rl(rl_cfg)
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "--model",
            str(run),
            "--prompts",
            str(prompts),
            "--reward",
            reward,
            "--out",
            str(out),
            "-n",
            "2",
            "--max-new-tokens",
            "6",
            "--precision",
            "fp32",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"] == str(tiny_model_dir)  # from the run's config.yaml
    assert summary["policy"] == str(run / "model")
    assert summary["run"] == str(run)
    assert summary["kl"]["mean"] > 0.0  # lr 5e-2 for 3 steps moves a tiny model visibly
    assert 0.0 <= summary["win_rate"]["value"] <= 1.0
    nat = summary["naturalness"]
    assert {"lexicon_share", "perplexity", "distinct_2", "flags", "unavailable"} <= set(nat)
    assert nat["perplexity"]["ratio"] == pytest.approx(
        summary["perplexity_under_baseline"]["policy"] / summary["perplexity_under_baseline"]["baseline"]
    )
    assert all(isinstance(flag, str) for flag in nat["flags"])
    page = (out / "report.html").read_text()
    assert 'id="naturalness"' in page
    assert page.count("data:image/png;base64,") == 4  # curves, reward vs KL, length and reward histograms
    assert "Training run" in page
    render_in_chromium(out / "report.html", tmp_path / "report.png")


def render_in_chromium(page_path: Path, screenshot: Path) -> None:
    """Open the report in headless Chromium; fail on any request other than the file itself."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        pytest.fail("Chromium is not installed: run scripts/test.sh (it installs Debian's chromium package)")
    requested: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda request: requested.append(request.url))
            page.goto(page_path.resolve().as_uri())
            page.wait_for_load_state("load")
            # Every plot decoded (a broken data URI leaves naturalWidth 0).
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
            assert widths and all(w > 0 for w in widths), widths
            assert page.locator("table tr").count() >= 2
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    external = [u for u in requested if not u.startswith(("file://", "data:"))]
    assert not external, external
    assert screenshot.stat().st_size > 10_000
    print(f"report screenshot: {screenshot}")
    if os.environ.get("RLXF_ARTIFACTS"):
        Path(os.environ["RLXF_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(os.environ["RLXF_ARTIFACTS"]) / "report.png")


def test_bad_input_stops_before_any_file(files, tmp_path, tiny_model_dir):
    prompts, reward = files
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="prompts"):  # no prompts, and no environment from a run
        evaluate(eval_config(str(tiny_model_dir), Path(""), reward, out))
    assert not out.exists()
    cfg = eval_config(str(tiny_model_dir), prompts, reward, out, baseline=str(tmp_path / "no-such-model"))
    with pytest.raises(Exception, match="no-such-model"):
        evaluate(cfg)
    assert not out.exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt field"}\n')
    with pytest.raises(Exception, match=r"bad.jsonl.*line 2"):
        evaluate(eval_config(str(tiny_model_dir), bad, reward, out))
    assert not out.exists()


# --- naturalness --------------------------------------------------------------------------------------


def test_naturalness_flags_each_bound_broken():
    block = naturalness(
        lexicon_share=(0.12, 0.05),  # ratio 2.4 > 1.8: stuffing
        perplexity=(30.0, 12.0),  # ratio 2.5 > 1.5: gibberish
        distinct_2=(0.45, 0.9),  # ratio 0.5 < 0.95: less varied
    )
    assert block["lexicon_share"] == {
        "policy": 0.12,
        "baseline": 0.05,
        "ratio": pytest.approx(2.4),
        "max_ratio": 1.8,
        "min_abs_valence": 1.0,
        "flagged": True,
    }
    assert block["perplexity"]["ratio"] == pytest.approx(2.5) and block["perplexity"]["bounds"] == [0.67, 1.5]
    assert block["distinct_2"]["ratio"] == pytest.approx(0.5) and block["distinct_2"]["min_ratio"] == 0.95
    assert all(block[k]["flagged"] for k in ("lexicon_share", "perplexity", "distinct_2"))
    lexicon, drift, variety = block["flags"]
    assert "12.0%" in lexicon and "2.40x" in lexicon and "1.8x" in lexicon and "stuffing" in lexicon
    assert "2.50x" in drift and "above the bound 1.5x" in drift and "gibberish" in drift
    assert "0.50x" in variety and "below the bound 0.95x" in variety and "less varied" in variety
    assert block["unavailable"] == {}


def test_naturalness_within_bounds_and_the_low_perplexity_side():
    ok = naturalness(lexicon_share=(0.09, 0.05), perplexity=(12.0, 10.0), distinct_2=(0.95, 1.0))
    # ratios 1.8, 1.2, 0.95: on or inside every bound (a bound is broken strictly)
    assert ok["flags"] == [] and not any(
        ok[k]["flagged"] for k in ("lexicon_share", "perplexity", "distinct_2")
    )
    bland = naturalness(lexicon_share=None, perplexity=(6.0, 10.0), distinct_2=(0.8, 0.8))
    (flag,) = bland["flags"]  # ratio 0.6 < 0.67
    assert "0.60x" in flag and "below the bound 0.67x" in flag and "blander" in flag
    assert "lexicon_share" not in bland and bland["unavailable"] == {"lexicon_share": "not measured"}
    custom = naturalness(
        lexicon_share=(0.09, 0.05), perplexity=(6.0, 10.0), distinct_2=(0.8, 0.8),
        max_lexicon_ratio=1.5, perplexity_ratio_bounds=[0.5, 2.0], min_distinct2_ratio=1.0,
    )  # fmt: skip
    assert [k for k in ("lexicon_share", "perplexity", "distinct_2") if custom[k]["flagged"]] == [
        "lexicon_share"
    ]


def test_naturalness_over_a_baseline_of_zero_and_without_perplexity():
    block = naturalness(
        lexicon_share=(0.1, 0.0),
        perplexity=None,
        distinct_2=(0.0, 0.0),
        unavailable={"perplexity": "policy and baseline tokenizers differ"},
    )
    assert block["lexicon_share"]["ratio"] is None and block["lexicon_share"]["flagged"]  # from none to some
    assert "where the baseline used none" in block["flags"][0]
    assert block["distinct_2"]["ratio"] is None and not block["distinct_2"]["flagged"]
    assert "perplexity" not in block and block["unavailable"] == {
        "perplexity": "policy and baseline tokenizers differ"
    }
    json.dumps(block, allow_nan=False)  # plain JSON: no inf or NaN
    none = naturalness(lexicon_share=(0.0, 0.0), perplexity=None, distinct_2=(0.5, 0.5))
    assert not none["lexicon_share"]["flagged"] and none["flags"] == []


def test_naturalness_bounds_are_checked(files, tmp_path):
    prompts, reward = files
    for bad, match in (
        ({"max_lexicon_ratio": 0.9}, "max_lexicon_ratio"),
        ({"perplexity_ratio_bounds": [1.5]}, "perplexity_ratio_bounds"),
        ({"perplexity_ratio_bounds": [1.2, 1.5]}, "perplexity_ratio_bounds"),  # 1 must be inside
        ({"perplexity_ratio_bounds": [0.0, 1.5]}, "perplexity_ratio_bounds"),
        ({"min_distinct2_ratio": 1.2}, "min_distinct2_ratio"),
    ):
        with pytest.raises(ValueError, match=match):
            eval_config("m", prompts, reward, tmp_path / "x", **bad)
    cfg = eval_config("m", prompts, reward, tmp_path / "x", perplexity_ratio_bounds=[0.5, 2])
    assert cfg.perplexity_ratio_bounds == [0.5, 2.0]


def test_describe_summary_prints_the_naturalness_line_and_each_flag():
    summary = {
        "reward_spec": "sentiment",
        "reward": {"policy": {"mean": 0.5, "se": 0.1}},
        "text": {"policy": {"length_mean": 10.0, "distinct_2": 0.5, "repetition": 0.0}},
        "naturalness": naturalness(lexicon_share=(0.2, 0.05), perplexity=None, distinct_2=(0.5, 0.5)),
    }
    lines = describe_summary(summary).splitlines()
    assert lines[-2] == (
        "naturalness vs the baseline: sentiment-lexicon share 4.00x, perplexity unavailable, distinct-2 1.00x; "
        "1 flag"
    )
    assert lines[-1].startswith("  flag: sentiment-lexicon word share 20.0% is 4.00x")


# --- proxy vs gold ------------------------------------------------------------------------------------

# A run that overoptimises its proxy: the gold peaks at step 20 while the proxy keeps rising. Step 5 is
# an evaluation without the gold reward (not a point); step 3 is a training row only.
RUN_METRICS = [
    {"step": 0, "eval/reward/mean": 0.0, "eval/gold_reward/mean": 0.0, "eval/kl": -0.01},
    {"step": 3, "reward/mean": 0.2, "kl": 0.5},
    {"step": 5, "eval/reward/mean": 0.2, "eval/kl": 1.0},
    {"step": 10, "reward/mean": 0.6, "kl": 2.1, "eval/reward/mean": 0.5, "eval/gold_reward/mean": 0.3, "eval/kl": 2.0},
    {"step": 20, "reward/mean": 1.0, "kl": 6.2, "eval/reward/mean": 0.9, "eval/gold_reward/mean": 0.4, "eval/kl": 6.0},
    {"step": 30, "reward/mean": 1.4, "kl": 12.5, "eval/reward/mean": 1.3, "eval/gold_reward/mean": 0.2, "eval/kl": 12.0},
]  # fmt: skip


def test_proxy_vs_gold_points_and_where_the_proxy_stops_tracking():
    points = proxy_vs_gold_points(RUN_METRICS)
    assert [p["step"] for p in points] == [0, 10, 20, 30]
    assert points[1] == {"step": 10, "kl": 2.0, "proxy": 0.5, "gold": 0.3}
    # gold highest at step 20 (0.4); then 0.2 at step 30 (falls 0.2) while the proxy goes 0.9 -> 1.3 (+0.4)
    sentence = proxy_gold_divergence(points)
    assert sentence.startswith("The proxy stops tracking the gold after step 20")
    assert "falls 0.2 by step 30" in sentence and "rises 0.4" in sentence
    assert proxy_gold_divergence(points[:3]) == (
        "Gold still rising at the last evaluation (step 20): the proxy still tracks it."
    )
    both_fall = [*points[:3], {"step": 30, "kl": 12.0, "proxy": 0.7, "gold": 0.2}]
    assert proxy_gold_divergence(both_fall).startswith("Gold peaked at step 20 and falls 0.2 by step 30")
    level = [*points[:3], {"step": 30, "kl": 12.0, "proxy": 1.3, "gold": 0.4}]
    assert "Gold level at its highest from step 20" in proxy_gold_divergence(level)
    assert "One held-out evaluation only" in proxy_gold_divergence(points[:1])
    assert proxy_vs_gold_points([{"step": 1, "reward/mean": 1.0}]) == []


def test_eval_plots_proxy_vs_gold_from_a_run_folder(files, tmp_path, tiny_model_dir):
    prompts, reward = files
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"model:\n  name_or_path: {tiny_model_dir}\nreward: model:runs/rm\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RUN_METRICS))
    out = tmp_path / "eval"
    cfg = eval_config(str(tiny_model_dir), prompts, reward, out, baseline=str(tiny_model_dir), run=str(run))
    result = evaluate(cfg)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["proxy_vs_gold"] == proxy_vs_gold_points(RUN_METRICS)
    assert [p["step"] for p in summary["proxy_vs_gold"]] == [0, 10, 20, 30]
    nat = summary["naturalness"]  # the model against itself, same seed: the same text, every ratio 1 or null
    assert nat["flags"] == [] and nat["perplexity"]["ratio"] == pytest.approx(1.0, rel=1e-3)
    assert nat["lexicon_share"]["policy"] == nat["lexicon_share"]["baseline"]
    page = (out / "report.html").read_text()
    assert "Proxy vs gold (Gao et al. 2022)" in page
    assert "The proxy stops tracking the gold after step 20" in page
    # training curves, proxy vs gold, reward vs KL, length and reward histograms
    assert page.count("data:image/png;base64,") == 5
    assert 'id="naturalness"' in page and "Every ratio within its bound." in page

    # The same report with a flagged naturalness block: the row marked, the sentence said.
    flagged = dict(result.summary)
    flagged["naturalness"] = naturalness(
        lexicon_share=(0.3, 0.1), perplexity=(10.0, 10.0), distinct_2=(0.9, 0.9)
    )
    lengths = {"policy": [6.0] * len(result.samples), "baseline": [6.0] * len(result.samples)}
    page = render_report(flagged, result.samples, read_metrics(run / "metrics.jsonl"), lengths)
    assert page.count("⚑ flagged") == 1 and page.count('<td class="good">ok</td>') == 2
    assert (
        "3.00×" in page
        and "≤ 1.8×" in page
        and "the policy may be stuffing" in page
        and '<ul class="bad">' in page
    )
