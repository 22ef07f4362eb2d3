"""`rlxf demo` end to end on a tiny random model (the real model's run is measured, not tested: ~10 min).

The demo's own pipeline (samples with framings -> simulated annotators -> reward model -> PPO on the
learned reward -> eval with VADER as the gold judge) runs through `rlxf demo --model TINY`, prints its
headline figures and the report's path; a second run reuses every stage; `--print-pipeline` is a
pipeline `rlxf run` accepts, and `demo()` from Python returns it.
"""

from __future__ import annotations

import json

import yaml

from rlxf.cli import main
from rlxf.config import load_config
from rlxf.pipeline import STAGE_FILE, PipelineConfig, plan


def test_the_demo_runs_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--model", str(tiny_model_dir), "--out", str(out), "--rl-steps", "1"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "held-out gold sentiment (VADER)" in err and "KL to the starting model" in err
    assert f"report: {out / 'eval' / 'report.html'}" in err
    for stage in ("samples", "feedback", "reward_model", "ppo", "eval"):
        assert (out / stage / STAGE_FILE).is_file(), stage
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["reward_spec"] == "sentiment" and summary["baseline"] == str(tiny_model_dir)
    assert summary["num_prompts"] == 60  # the held-out openings
    # Positive share, naturalness against the start model, and the proxy-vs-gold points of PPO's held-out
    # evaluations (steps 0 and 1: the learned reward beside VADER on the test openings).
    assert "positive completions (VADER > 0.05)" in err and "vs the starting model: " in err
    assert [point["step"] for point in summary["proxy_vs_gold"]] == [0, 1]
    ppo_rows = [
        json.loads(line) for line in (out / "ppo" / "samples" / "step-000001.jsonl").read_text().splitlines()
    ]
    assert len(ppo_rows) == 120 and all("gold_reward" in row for row in ppo_rows)  # 60 openings x 2
    assert "proxy vs gold on held-out openings" in err
    assert summary["naturalness"]["distinct_2"]["ratio"] > 0
    page = (out / "eval" / "report.html").read_text()
    assert (
        "Proxy vs gold (Gao et al. 2022)" in page and "Naturalness" in page
    )  # the demo's report renders both

    assert main(argv) == 0
    assert capsys.readouterr().err.count("finished earlier, reusing") == 5

    assert main(["demo", "--print-pipeline", "--out", str(out)]) == 0
    spec = yaml.safe_load(capsys.readouterr().out)
    assert [s.spec.name for s in plan(load_config(PipelineConfig, overrides=spec))] == [
        "samples",
        "feedback",
        "reward_model",
        "ppo",
        "eval",
    ]
    assert spec["stages"][3]["options"]["train"]["learning_rate"] == 4.0e-5  # RL's knobs under `train:`

    # From Python, demo() returns what the command prints; with print_pipeline it only builds the pipeline.
    from rlxf import DemoConfig, demo

    result = demo(DemoConfig(out=str(out), print_pipeline=True))
    assert result.pipeline == spec and result.status == 0 and result.eval_summary == {}
