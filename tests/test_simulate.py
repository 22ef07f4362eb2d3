"""Simulated annotators: without noise and bias the labels are the oracle's; flip noise and position bias
show up at their rates (within binomial bounds); a pool of annotators, ratings with noise, determinism
for a seed, and ``rlxf simulate`` end to end (its output read back by rlxf's readers)."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from rlxf.cli import main
from rlxf.data import read_data
from rlxf.feedback.rewards import RewardSource
from rlxf.feedback.simulate import SimulateConfig, simulate_preferences, simulate_ratings, simulation_summary
from rlxf.train.outdir import claim_output_folder, write_output_folder
from rlxf.train.run import RunExistsError

N = 4000  # pairs for the rate tests: a binomial share's standard error is at most 0.008 at this size


def length_reward() -> RewardSource:
    """The oracle: a longer response is better."""
    return RewardSource("length", lambda prompts, completions: [float(len(c)) for c in completions])


def pairs(n: int = N) -> list[dict]:
    """``n`` pairs of different lengths; the longer one is first in half of them (by a fixed pattern)."""
    rng = np.random.default_rng(123)
    out = []
    for i in range(n):
        short, long = "x" * int(rng.integers(1, 20)), "y" * int(rng.integers(21, 40))
        out.append({"prompt": f"p{i}", "responses": [long, short] if i % 2 else [short, long], "id": str(i)})
    return out


def within(observed: float, expected: float, n: int) -> bool:
    """``observed`` is within 4 standard errors of a binomial share ``expected`` over ``n`` trials."""
    return abs(observed - expected) <= 4 * math.sqrt(expected * (1 - expected) / n) + 1e-12


def test_no_noise_no_bias_gives_the_oracles_ordering():
    labelled = simulate_preferences(pairs(200), length_reward(), seed=1)
    assert all(len(r["chosen"]) > len(r["rejected"]) for r in labelled)
    assert [r["id"] for r in labelled] == [str(i) for i in range(200)]  # order and extra fields kept
    summary = simulation_summary(labelled)
    assert (
        summary["oracle_agreement"] == 1.0 and summary["flipped"] == 0.0 and summary["position_picks"] == 0.0
    )
    assert within(summary["first_shown"], 0.5, 200)  # shown in a random order


@pytest.mark.parametrize("noise", [0.1, 0.3])
def test_flip_noise_disagrees_with_the_oracle_at_its_rate(noise):
    labelled = simulate_preferences(pairs(), length_reward(), noise=noise, seed=2)
    disagreement = sum(len(r["chosen"]) < len(r["rejected"]) for r in labelled) / N
    assert within(disagreement, noise, N)
    assert all(r["simulated"]["flipped"] == (not r["simulated"]["oracle_agrees"]) for r in labelled)


def test_position_bias_picks_the_first_shown_response_at_half_plus_half_b():
    bias, noise = 0.4, 0.1
    labelled = simulate_preferences(pairs(), length_reward(), noise=noise, position_bias=bias, seed=3)
    summary = simulation_summary(labelled)
    assert within(summary["first_shown"], 0.5 + bias / 2, N)
    assert within(summary["position_picks"], bias, N)
    assert within(summary["oracle_agreement"], (1 - bias) * (1 - noise) + bias / 2, N)


def test_a_pool_of_annotators_and_determinism():
    records = pairs(400)
    # annotator 0 is perfect, annotator 1 always flips: agreement tells who labelled what
    labelled = simulate_preferences(records, length_reward(), noise=[0.0, 1.0], annotators=2, seed=4)
    by_annotator = {0: [], 1: []}
    for r in labelled:
        by_annotator[r["simulated"]["annotator"]].append(r["simulated"]["oracle_agrees"])
    assert all(by_annotator[0]) and not any(by_annotator[1])
    assert within(len(by_annotator[0]) / 400, 0.5, 400)  # pairs go to annotators at random
    again = simulate_preferences(records, length_reward(), noise=[0.0, 1.0], annotators=2, seed=4)
    assert again == labelled
    other = simulate_preferences(records, length_reward(), noise=[0.0, 1.0], annotators=2, seed=5)
    assert other != labelled
    with pytest.raises(ValueError, match="noise: give one value or one per annotator \\(3\\)"):
        simulate_preferences(records, length_reward(), noise=[0.1, 0.2], annotators=3)
    with pytest.raises(ValueError, match="position_bias must be in \\[0, 1\\]"):
        simulate_preferences(records, length_reward(), position_bias=1.5)


def test_oracle_ties_are_a_fair_coin():
    tied = [{"prompt": "p", "responses": ["ab", "cd"]} for _ in range(N)]
    labelled = simulate_preferences(tied, length_reward(), seed=6)
    share = sum(r["chosen"] == "ab" for r in labelled) / N
    assert within(share, 0.5, N)
    assert simulation_summary(labelled)["oracle_ties"] == 1.0


def test_ratings_are_the_reward_plus_gaussian_noise():
    records = pairs(2000)
    exact = simulate_ratings(records, length_reward())
    assert len(exact) == 4000 and all(r["rating"] == len(r["completion"]) for r in exact)
    noisy = simulate_ratings(records, length_reward(), rating_noise=2.0, seed=7)
    residuals = np.array([r["rating"] - r["simulated"]["reward"] for r in noisy])
    assert abs(residuals.mean()) < 4 * 2.0 / math.sqrt(4000)
    assert residuals.std() == pytest.approx(2.0, rel=0.06)
    assert simulate_ratings(records, length_reward(), rating_noise=2.0, seed=7) == noisy


def test_simulate_command_end_to_end(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="rlxf")
    oracle = tmp_path / "oracle.py"
    oracle.write_text("def length(prompts, completions):\n    return [float(len(c)) for c in completions]\n")
    records = [
        {"prompt": f"p{i}", "chosen": "long answer number " + "x" * i, "rejected": "short " + str(i)}
        for i in range(30)
    ]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "sim"
    args = ["simulate", "--data", str(data), "--reward", f"fn:{oracle}:length", "--out", str(out)]
    assert main(args) == 0
    assert "oracle_agreement" in caplog.text  # the figures are logged
    prefs = read_data(out / "preferences.jsonl")
    assert prefs.kind == "preferences" and len(prefs) == 30
    assert [r["chosen"] for r in prefs.records] == [r["chosen"] for r in records]  # the oracle agrees here
    summary = json.loads((out / "summary.json").read_text())
    assert summary["oracle"] == f"fn:{oracle}:length" and summary["metrics"]["agreement"] == 1.0
    assert main(args) == 2  # the folder holds this output now: refused without --overwrite
    assert "already holds rlxf simulate output (preferences.jsonl, summary.json, config.yaml)" in (
        capsys.readouterr().err
    )

    noisy = [*args, "--overwrite", "--noise", "1.0", "--seed", "3"]
    assert main(noisy) == 0
    assert json.loads((out / "summary.json").read_text())["metrics"]["agreement"] == 0.0

    assert main([*args, "--overwrite", "--mode", "pointwise"]) == 0
    ratings = read_data(out / "ratings.jsonl")
    assert ratings.kind == "ratings" and len(ratings) == 60 and not (out / "preferences.jsonl").exists()

    assert (
        main(
            [*args, "--overwrite", "--annotators", "2", "--noise", "0.1", "--noise", "0.2", "--noise", "0.3"]
        )
        == 2
    )
    assert "noise: give one value or one per annotator (2), got 3" in capsys.readouterr().err


def test_the_output_folder_guard(tmp_path):
    """One guard for sample, judge, simulate and eval: refuse an earlier output unless overwrite, then
    delete exactly the command's entries (files and folders), never the user's other files."""
    out = tmp_path / "out"
    entries = ("summary.json", "data.jsonl", "plots")
    assert claim_output_folder(out, entries, overwrite=False, command="rlxf x") == out
    assert not out.exists()  # claiming creates nothing: a failed command leaves no empty folder
    write_output_folder(
        out, SimulateConfig(data="d", reward="sentiment", out=str(out)), {"n": 1}, {"data.jsonl": [{"a": 1}]}
    )
    (out / "plots").mkdir()
    (out / "notes.txt").write_text("mine")
    assert json.loads((out / "summary.json").read_text()) == {"n": 1}
    assert (out / "config.yaml").read_text().startswith("data: d")
    with pytest.raises(
        RunExistsError, match=r"already holds rlxf x output \(summary.json, data.jsonl, plots\)"
    ):
        claim_output_folder(out, entries, overwrite=False, command="rlxf x")
    claim_output_folder(out, entries, overwrite=True, command="rlxf x")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "notes.txt"]
    with pytest.raises(NotADirectoryError):
        claim_output_folder(out / "notes.txt", entries, overwrite=True, command="rlxf x")
