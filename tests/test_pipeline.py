"""`rlxf run` (rlxf/pipeline.py): the whole loop on a tiny model, re-runs, a kill mid-RL, failures.

The pipeline: sample pairs -> simulated annotator (a function oracle) -> reward model -> RL (GRPO against
the learned reward) -> eval. Checked:

* it runs end to end; each stage's folder holds `stage.json`; a second run reuses every stage;
* a kill (SIGKILL) in the middle of the RL stage, then a re-run: the finished stages are not redone
  (their files are untouched) and RL resumes from its last checkpoint, then the pipeline finishes;
* a changed option re-runs that stage and the ones after it, and only those;
* bad options anywhere stop before the first stage; a failing stage leaves the earlier ones intact;
* `${NAME}` must name an earlier stage.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlxf.config import ConfigError, load_config
from rlxf.pipeline import STAGE_FILE, PipelineConfig, run_pipeline

ORACLE = """
def score(prompts, completions):
    return [c.count("e") / max(len(c), 1) for c in completions]


def broken(prompts, completions):
    raise RuntimeError("the scorer is down")
"""

PROMPTS = [
    f"Review {i}: the {w} was" for i, w in enumerate(["film", "meal", "room", "book", "tour", "phone"] * 2)
]


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (tmp_path / "oracle.py").write_text(ORACLE)
    return tmp_path


def pipeline(workdir: Path, model: Path, rl_steps: int = 3, eval_seed: int = 0, save_every: int = 0) -> dict:
    prompts = str(workdir / "prompts.jsonl")
    tiny_sampling = {"n": 2, "max_new_tokens": 6, "batch_size": 16}
    return {
        "out": str(workdir / "loop"),
        "stages": [
            {
                "name": "samples",
                "kind": "sample",
                "options": {
                    "model": {"name_or_path": str(model)},
                    "prompts": prompts,
                    "sampling": dict(tiny_sampling),
                    "precision": "fp32",
                },
            },
            {
                "name": "feedback",
                "kind": "simulate",
                "options": {
                    "data": "${samples}/candidates.jsonl",
                    "reward": f"fn:{workdir / 'oracle.py'}:score",
                    "noise": 0.1,
                },
            },
            {
                "name": "rm",
                "kind": "reward",
                "options": {
                    "model": {"name_or_path": str(model)},
                    "data": "${feedback}/preferences.jsonl",
                    "train": {
                        "learning_rate": 1e-3,
                        "global_batch_size": 4,
                        "micro_batch_size": 4,
                        "max_steps": 2,
                        "precision": "fp32",
                    },
                },
            },
            {
                "name": "policy",
                "kind": "rl",
                "options": {
                    "model": {"name_or_path": str(model)},
                    "prompts": prompts,
                    "reward": "model:${rm}",
                    "estimator": "grpo",
                    "sampling": dict(tiny_sampling),
                    "prompts_per_step": 4,
                    "num_steps": rl_steps,
                    "micro_batch_size": 4,
                    "train": {"learning_rate": 1e-2, "precision": "fp32", "save_every": save_every},
                    "reward_options": {"dtype": "float32"},
                },
            },
            {
                "name": "eval",
                "kind": "eval",
                "options": {
                    "model": {"name_or_path": "${policy}"},
                    "prompts": prompts,
                    "reward": f"fn:{workdir / 'oracle.py'}:score",
                    "sampling": dict(tiny_sampling),
                    "precision": "fp32",
                    "seed": eval_seed,
                },
            },
        ],
    }


def write_pipeline(workdir: Path, spec: dict) -> Path:
    path = workdir / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def stage_mtimes(out: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob(f"*/{STAGE_FILE}")}


def test_runs_end_to_end_then_reuses_everything(workdir, tiny_model_dir, caplog):
    caplog.set_level(logging.INFO, logger="rlxf")
    cfg = load_config(PipelineConfig, overrides=pipeline(workdir, tiny_model_dir))
    assert run_pipeline(cfg) == 0
    out = workdir / "loop"
    for name in ("samples", "feedback", "rm", "policy", "eval"):
        assert (out / name / STAGE_FILE).is_file(), name
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["baseline"] == str(tiny_model_dir)  # found from the policy run's config
    assert (out / "eval" / "report.html").is_file()
    before = stage_mtimes(out)
    caplog.clear()
    assert run_pipeline(cfg) == 0
    assert stage_mtimes(out) == before
    reused = [
        r for r in caplog.records if r.name == "rlxf.pipeline" and "finished earlier, reusing" in r.message
    ]
    assert len(reused) == 5

    # A changed eval option runs eval again, and nothing before it.
    changed = load_config(PipelineConfig, overrides=pipeline(workdir, tiny_model_dir, eval_seed=1))
    assert run_pipeline(changed) == 0
    after = stage_mtimes(out)
    assert after["eval"] != before["eval"]
    assert {k: v for k, v in after.items() if k != "eval"} == {k: v for k, v in before.items() if k != "eval"}


def test_kill_during_rl_then_rerun_resumes_it_and_keeps_the_rest(workdir, tiny_model_dir):
    spec = pipeline(workdir, tiny_model_dir, rl_steps=40, save_every=2)
    path = write_pipeline(workdir, spec)
    out = workdir / "loop"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlxf", "run", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = out / "policy" / "checkpoints"
    deadline = time.monotonic() + 240
    try:
        while not (checkpoints / "latest").is_file():
            assert proc.poll() is None, "the pipeline ended before the RL stage saved a checkpoint"
            assert time.monotonic() < deadline, "no RL checkpoint within 240 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "policy" / STAGE_FILE).exists()  # killed mid-stage
    earlier = stage_mtimes(out)
    assert set(earlier) == {"samples", "feedback", "rm"}

    result = subprocess.run(
        [sys.executable, "-m", "rlxf", "run", str(path)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "policy (rl): interrupted earlier, resuming from its last checkpoint" in result.stderr
    assert "resuming" in result.stderr and "from step-" in result.stderr
    for name in ("samples", "feedback", "rm"):
        assert f"{name} (" in result.stderr and stage_mtimes(out)[name] == earlier[name], name
    summary = json.loads((out / "policy" / "summary.json").read_text())
    assert summary["resumed_from_step"] >= 2
    metrics = [json.loads(line) for line in (out / "policy" / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics if "reward/mean" in m and "eval/reward/mean" not in m]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # every step logged once, none twice
    assert (out / "eval" / STAGE_FILE).is_file()


def test_bad_options_stop_before_the_first_stage(workdir, tiny_model_dir):
    spec = pipeline(workdir, tiny_model_dir)
    spec["stages"][4]["options"]["sampling"]["temprature"] = 0.5  # a typo in the last stage
    with pytest.raises(ConfigError, match=r"stage eval \(eval\).*temprature"):
        run_pipeline(load_config(PipelineConfig, overrides=spec))
    assert not (workdir / "loop" / "samples").exists()

    spec = pipeline(workdir, tiny_model_dir)
    spec["stages"][2]["options"]["data"] = "${policy}/preferences.jsonl"  # a later stage
    with pytest.raises(ConfigError, match=r"\$\{policy\} is not an earlier stage"):
        run_pipeline(load_config(PipelineConfig, overrides=spec))


def test_a_failing_stage_stops_the_pipeline_and_keeps_the_earlier_ones(workdir, tiny_model_dir):
    spec = pipeline(workdir, tiny_model_dir)
    spec["stages"][1]["options"]["reward"] = f"fn:{workdir / 'oracle.py'}:broken"
    cfg = load_config(PipelineConfig, overrides=spec)
    with pytest.raises(Exception, match="the scorer is down"):
        run_pipeline(cfg)
    out = workdir / "loop"
    assert (out / "samples" / STAGE_FILE).is_file()
    assert not (out / "feedback" / STAGE_FILE).exists()
    assert not (out / "rm").exists()


def test_a_labelling_stage_waits_for_people_then_the_pipeline_goes_on(workdir, tiny_model_dir, caplog):
    """sample -> label (a pairwise project people judge in the web app) -> reward model. The first run
    stops with status 3 at the label stage; once a labeller has judged every pair, a re-run exports the
    labels and trains the reward model on them."""
    from fastapi.testclient import TestClient

    from rlxf.feedback.label.app import create_app
    from rlxf.feedback.label.auth import password_hasher
    from rlxf.feedback.label.db import init_db, make_engine, make_sessionmaker
    from rlxf.feedback.label.projects import add_user
    from rlxf.pipeline import WAITING_FOR_LABELS

    db_url = f"sqlite:///{workdir / 'labels.db'}"
    engine = make_engine(db_url)
    init_db(engine)
    with make_sessionmaker(engine)() as db:
        add_user(db, password_hasher(cheap=True), "lena", "correct horse", False)
    engine.dispose()

    spec = pipeline(workdir, tiny_model_dir)
    samples, _, rm = spec["stages"][0], spec["stages"][1], spec["stages"][2]
    samples["options"]["max_prompts"] = 4
    label = {
        "name": "people",
        "kind": "label",
        "options": {
            "db": db_url,
            "name": "loop-pairs",
            "data": "${samples}/candidates.jsonl",
            "members": ["lena"],
        },
    }
    rm["options"]["data"] = "${people}/preferences.jsonl"
    spec["stages"] = [samples, label, rm]
    cfg = load_config(PipelineConfig, overrides=spec)
    caplog.set_level(logging.INFO, logger="rlxf")
    assert run_pipeline(cfg) == WAITING_FOR_LABELS
    assert "0 of 4 items have 1 label(s)" in caplog.text and "Come back when it is labelled" in caplog.text
    assert not (workdir / "loop" / "rm").exists()

    app = create_app(db_url, hasher=password_hasher(cheap=True), allowed_hosts=["testserver"])
    client = TestClient(app)
    login = client.post("/api/login", json={"username": "lena", "password": "correct horse"})
    csrf = login.json()["csrf_token"]
    (project,) = client.get("/api/projects").json()
    for i in range(4):
        item = client.get(f"/api/projects/{project['id']}/next").json()
        answer = {"client_id": f"vote-{i}", "choice": "A" if i % 2 else "B"}
        url = f"/api/projects/{project['id']}/items/{item['item_id']}/answers"
        assert client.post(url, json=answer, headers={"X-CSRF-Token": csrf}).status_code == 201
    app.state.engine.dispose()

    assert run_pipeline(cfg) == 0
    exported = (workdir / "loop" / "people" / "preferences.jsonl").read_text().splitlines()
    assert len(exported) == 4
    assert (workdir / "loop" / "rm" / STAGE_FILE).is_file()


# Options that build each stage kind's config (no file is read when a config is built).
MINIMAL_OPTIONS = {
    "sample": {"prompts": "p.jsonl"},
    "simulate": {"data": "c.jsonl", "reward": "sentiment"},
    "judge": {"data": "c.jsonl"},
    "label": {"data": "c.jsonl", "name": "project"},
    "pretrain": {"data": "corpus.jsonl", "arch": "gpt2"},
    "sft": {"data": "d.jsonl"},
    "reward": {"data": "d.jsonl"},
    "dpo": {"data": "d.jsonl"},
    "kto": {"data": "d.jsonl"},
    "ilql": {"data": "d.jsonl"},
    "rl": {"prompts": "p.jsonl", "reward": "sentiment"},
    "selfplay": {"game": "tug-of-war"},
    "eval": {"prompts": "p.jsonl", "reward": "sentiment", "model": {"name_or_path": "some/run"}},
}


def test_stage_kinds_and_cli_commands_are_one_table(tmp_path):
    """Every stage kind is a CLI command (same config class, same function) and every CLI command is a
    stage kind, but for rlxf.commands.NOT_STAGES, which docs/pipeline.md lists."""
    import typing

    from rlxf.cli import find_command
    from rlxf.commands import COMMANDS, NOT_STAGES
    from rlxf.pipeline import StageConfig, plan

    kinds = typing.get_args(typing.get_type_hints(StageConfig)["kind"])
    assert sorted(kinds) == sorted(MINIMAL_OPTIONS)  # a new kind needs a line above
    assert sorted(kinds) == sorted(c.stage for c in COMMANDS if c.stage is not None)
    with pytest.raises(ConfigError, match="'ppo' is not one of"):
        load_config(StageConfig, overrides={"name": "x", "kind": "ppo"})

    spec = {
        "out": str(tmp_path / "loop"),
        "stages": [{"name": kind, "kind": kind, "options": MINIMAL_OPTIONS[kind]} for kind in kinds],
    }
    for stage in plan(load_config(PipelineConfig, overrides=spec)):
        (entry,) = [c for c in COMMANDS if c.stage == stage.spec.kind]
        assert find_command([*entry.name.split(), "--help"]) == (entry, ["--help"])  # the CLI runs it
        assert stage.config_cls is entry.config_class() and stage.run is entry.library_function()

    assert {c.name for c in COMMANDS if c.stage is None} == set(NOT_STAGES)
    documented = (Path(__file__).parents[1] / "docs" / "pipeline.md").read_text()
    for name in NOT_STAGES:
        assert f"`rlxf {name}`" in documented, name


def test_label_collect_is_the_label_stage_on_the_command_line(tmp_path, capsys):
    """`rlxf label collect` creates the project, then exits with status 3 until people have labelled it."""
    from rlxf.cli import main
    from rlxf.pipeline import WAITING_FOR_LABELS

    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text(json.dumps({"prompt": "The film was", "responses": [" good.", " bad."]}) + "\n")
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    argv = ["label", "collect", "--db", db, "--name", "films", "--data", str(candidates)]
    assert main([*argv, "--out", str(tmp_path / "people")]) == WAITING_FOR_LABELS
    err = capsys.readouterr().err
    assert "created pairwise project 'films'" in err and "0 of 1 items have 1 label(s)" in err
    assert not (tmp_path / "people" / "preferences.jsonl").exists()
