"""`rlxf eval` (rlxf/eval/evaluate.py) and its report (rlxf/eval/report.py) on a tiny random model.

* standard errors by hand;
* a model compared with itself: the same seed gives the same samples, so the reward change is 0, every
  comparison is a tie (win rate 1/2) and KL(A || A) from the engine's log-probs and a forward pass is 0;
* after a short `rlxf rl` run: eval of the run folder finds the starting model as its baseline by itself,
  writes summary.json, samples.jsonl and report.html; the report's plots come from the run's metrics;
* the report renders in headless Chromium with no request but the page itself; a screenshot is saved;
* bad input (no prompts, a missing baseline) stops before any file is written.
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
from rlxf.eval.evaluate import EvalConfig, evaluate, mean_se, per_prompt

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
    page = (out / "report.html").read_text()
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
