"""`rlxf sample` (rlxf/rollout/candidates.py): candidates records from a model's own samples.

* n samples per prompt become n / group records of `group` responses, each with the bare prompt;
* with framings, response k of a group is drawn after framing k (the model sees it, the record does not);
* n not a multiple of group, or framings with chat prompts, stop before the model loads.
"""

from __future__ import annotations

import json

import pytest

from rlxf.config import ConfigError, load_config
from rlxf.rollout import candidates as candidates_module
from rlxf.rollout.candidates import SampleConfig, sample_candidates

PROMPTS = ["The movie was", "Our trip to the coast", "The restaurant served"]


def config(tmp_path, model_dir, **extra) -> SampleConfig:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    values = {
        "model": {"name_or_path": str(model_dir)},
        "prompts": str(prompts),
        "out": str(tmp_path / "samples"),
        "sampling": {"n": 4, "max_new_tokens": 5, "batch_size": 16},
        "precision": "fp32",
    }
    values.update(extra)
    return load_config(SampleConfig, overrides=values)


def test_pairs_with_bare_prompts_and_hidden_framings(tmp_path, tiny_model_dir, monkeypatch):
    seen: list[list[str]] = []
    generate = candidates_module.HFEngine.generate

    def spy(self, prompts, sampling, **kw):
        seen.append(list(prompts))
        return generate(self, prompts, sampling, **kw)

    monkeypatch.setattr(candidates_module.HFEngine, "generate", spy)
    cfg = config(tmp_path, tiny_model_dir, framings=["GOOD: ", "BAD: "])
    summary = sample_candidates(cfg)
    rows = [json.loads(line) for line in (tmp_path / "samples" / "candidates.jsonl").read_text().splitlines()]
    assert summary["records"] + summary["dropped"] == len(PROMPTS) * 2
    for row in rows:
        assert row["prompt"] in PROMPTS  # the bare prompt
        assert len(row["responses"]) == 2
        assert row["meta"]["framings"] == [0, 1]
    # The model saw every prompt 4 times: framing 0, 1, 0, 1 (response k of each pair after framing k).
    assert seen[0][:4] == [
        "GOOD: The movie was",
        "BAD: The movie was",
        "GOOD: The movie was",
        "BAD: The movie was",
    ]
    assert (tmp_path / "samples" / "summary.json").is_file()


def test_bad_options_stop_before_the_model_loads(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="multiple of group"):
        config(tmp_path, tiny_model_dir, group=3)
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    cfg = config(tmp_path, tiny_model_dir, framings=["x"], prompts=str(chat))
    with pytest.raises(Exception, match=r"chat.jsonl.*framings need plain-text prompts"):
        sample_candidates(cfg)
    assert not (tmp_path / "samples").exists()
