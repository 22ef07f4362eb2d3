"""A gold reward beside the proxy in `rlxf rl`'s held-out evaluation (``gold_reward``, rlxf/algos/rl.py;
Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization"), on the tiny random model.

* a run whose gold reward differs from its training reward logs ``eval/gold_reward/mean`` and ``/std`` at
  step 0 and at the end, equal to the statistics of the ``gold_reward`` fields of the samples files, each
  field the gold function's value of that sample; the gold source is loaded once and called on the
  held-out samples only, never on a training batch;
* a malformed ``gold_reward`` stops the config build naming the field; a spec that does not parse stops
  ``rl`` before the run folder, naming the field;
* ``gold_reward`` without a held-out set stops at the config build (``eval_split=0``) or, when only the
  prompt count tells (``eval_split=auto`` below 100 prompts), before the run folder and before training;
  with an environment it is refused;
* on 2 processes (``torchrun``) the gathered held-out rows, their gold rewards and statistics are one
  process's.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import test_ppo
from test_ppo import make_config

from rlxf.algos.rl import RLConfig, RLTrainer, rl
from rlxf.config import load_config
from rlxf.train.metrics import read_metrics
from rlxf.train.run import RunDir

# test_ppo's fixture: 6 `train` prompts, 2 `test` (held out), the proxy fn:reward_fn.py:score
setup = test_ppo.setup

# The gold reward: the completion's length in characters (the proxy, test_ppo's `score`, is the share of
# "e" in it: a number in [0, 1]). Loading and each call leave a line in gold_calls.txt beside the file.
GOLD_FILE = """
from pathlib import Path

LOG = Path(__file__).with_name("gold_calls.txt")
with LOG.open("a") as f:
    f.write("load\\n")


def gold(prompts, completions):
    with LOG.open("a") as f:
        f.write(f"{len(completions)}\\n")
    return [float(len(c)) for c in completions]
"""


@pytest.fixture
def gold(setup):
    tmp_path = setup[0]
    path = tmp_path / "gold_fn.py"
    path.write_text(GOLD_FILE)
    return path


def samples(out: Path, step: int) -> list[dict]:
    lines = (out / "samples" / f"step-{step:06d}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_gold_reward_is_logged_beside_the_proxy_on_held_out_samples(setup, gold):
    cfg = make_config(setup, gold_reward=f"fn:{gold}:gold")
    result = rl(cfg)
    out = Path(cfg.out)
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2, 2]
    for record, step in ((records[0], 0), (records[3], 2)):
        rows = samples(out, step)
        assert len(rows) == 2  # the two `test` prompts, one sample each
        gold_values = [r["gold_reward"] for r in rows]
        assert gold_values == [float(len(r["completion"])) for r in rows]  # the gold function's, per sample
        assert [r["reward"] for r in rows] == pytest.approx(  # the proxy's, unchanged
            [r["completion"].count("e") / max(len(r["completion"]), 1) for r in rows]
        )
        assert record["eval/gold_reward/mean"] == pytest.approx(statistics.mean(gold_values), rel=1e-6)
        assert record["eval/gold_reward/std"] == pytest.approx(statistics.stdev(gold_values), rel=1e-6)
        assert record["eval/reward/mean"] == pytest.approx(statistics.mean(r["reward"] for r in rows))
        assert record["eval/gold_reward/mean"] != pytest.approx(record["eval/reward/mean"])
    assert any(len(r["completion"]) > 1 for r in samples(out, 0))  # so gold (length) and proxy (<= 1) differ
    for record in records[1:3]:  # training steps: the proxy only
        assert not any(k.startswith("eval/") for k in record)
    assert result.metrics["eval/gold_reward/mean"] == records[3]["eval/gold_reward/mean"]
    # loaded once; called twice (step 0 and the end) on the 2 held-out samples, never on a training batch
    # of 4 prompts x 2 samples
    assert (gold.parent / "gold_calls.txt").read_text().split() == ["load", "2", "2"]


def test_no_gold_reward_no_gold_fields(setup):
    cfg = make_config(setup, num_steps=1)
    result = rl(cfg)
    assert not any(k.startswith("eval/gold_reward") for k in result.metrics)
    assert all("gold_reward" not in r for r in samples(Path(cfg.out), 1))


@pytest.mark.parametrize("spec", ["", "   ", [], 3, {"source": "sentiment"}])
def test_malformed_gold_reward_stops_the_config_build(setup, spec):
    with pytest.raises(ValueError, match="gold_reward must be a reward spec"):
        make_config(setup, gold_reward=spec)


def test_bad_gold_reward_spec_stops_before_the_run_folder(setup, gold):
    cfg = make_config(setup, gold_reward="no-such-scorer")
    with pytest.raises(ValueError, match=r"^gold_reward: unknown reward spec 'no-such-scorer'"):
        rl(cfg)
    assert not Path(cfg.out).exists()
    cfg = make_config(setup, gold_reward=f"0.5*sentiment + 0.5*fn:{gold}:no_such_function")
    with pytest.raises(ValueError, match=r"^gold_reward: .*has no function 'no_such_function'"):
        rl(cfg)
    assert not Path(cfg.out).exists()


def test_gold_reward_needs_a_held_out_set(setup, gold):
    spec = f"fn:{gold}:gold"
    # eval_split=0 and no eval_prompts: known at the config build
    with pytest.raises(
        ValueError, match=r"gold_reward .*none \(eval_split=0\): set eval_prompts .*eval_split"
    ):
        make_config(setup, gold_reward=spec, eval_prompts=None, eval_prompts_split=None, eval_split=0)
    # eval_split=auto holds out nothing of 6 prompts: known once the prompts are read, before the run folder
    cfg = make_config(setup, gold_reward=spec, eval_prompts=None, eval_prompts_split=None)
    with pytest.raises(ValueError, match=r"gold_reward .*eval_split=auto.*: set eval_prompts"):
        rl(cfg)
    assert not Path(cfg.out).exists()
    # and the trainer itself refuses it at setup, before any step
    with RunDir.create(cfg.out, cfg) as run:
        with pytest.raises(ValueError, match=r"gold_reward .*: set eval_prompts"):
            RLTrainer(cfg, run, lambda prompts, completions: [0.0] * len(completions))
        assert not (run.path / "samples").exists()  # not even the step-0 evaluation ran
    assert not (gold.parent / "gold_calls.txt").exists()  # each check came before loading the gold reward


def test_gold_reward_is_refused_with_an_environment(setup):
    values = {
        "model": {"name_or_path": str(setup[3])},
        "env": {"name": "arithmetic"},
        "out": str(setup[0] / "run"),
        "gold_reward": "sentiment",
    }
    with pytest.raises(ValueError, match="environment .*leave gold_reward unset"):
        load_config(RLConfig, overrides=values)


def test_gold_reward_on_two_processes_equals_one(tiny_model_dir, tmp_path):
    """``torchrun``, 2 processes: each scores its share of the 3 held-out prompts (1 and 2) with the gold
    reward; the gathered rows and their statistics are one process's."""
    from test_distributed import run
    from test_distributed_rl import HELD_OUT, REWARD, TRAIN, rl_command

    (tmp_path / "reward.py").write_text(REWARD)
    (tmp_path / "gold_fn.py").write_text(GOLD_FILE)
    for name, prompts in (("train.jsonl", TRAIN), ("held_out.jsonl", HELD_OUT)):
        (tmp_path / name).write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    case = [f"gold_reward=fn:{tmp_path / 'gold_fn.py'}:gold", "num_steps=1", "train.precision=fp32"]
    one, two = tmp_path / "one", tmp_path / "two"
    run(rl_command(tiny_model_dir, tmp_path, one, case), processes=1)
    run(rl_command(tiny_model_dir, tmp_path, two, case), processes=2)
    for step in (0, 1):
        rows = samples(two, step)
        assert (two / "samples" / f"step-{step:06d}.jsonl").read_text() == (
            one / "samples" / f"step-{step:06d}.jsonl"
        ).read_text()
        assert [r["prompt"] for r in rows] == HELD_OUT  # in order, all 3
        assert [r["gold_reward"] for r in rows] == [float(len(r["completion"])) for r in rows]
    evals_one = [r for r in read_metrics(one / "metrics.jsonl") if "eval/gold_reward/mean" in r]
    evals_two = [r for r in read_metrics(two / "metrics.jsonl") if "eval/gold_reward/mean" in r]
    assert [r["step"] for r in evals_two] == [r["step"] for r in evals_one] == [0, 1]
    for a, b, step in zip(evals_one, evals_two, (0, 1)):
        gold_values = [r["gold_reward"] for r in samples(two, step)]
        assert b["eval/gold_reward/mean"] == pytest.approx(statistics.mean(gold_values), rel=1e-6)
        assert b["eval/gold_reward/std"] == pytest.approx(statistics.stdev(gold_values), rel=1e-6)
        assert b["eval/gold_reward/mean"] == a["eval/gold_reward/mean"]
        assert b["eval/gold_reward/std"] == a["eval/gold_reward/std"]
