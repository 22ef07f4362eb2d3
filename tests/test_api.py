"""The public Python API and the command line read from one command table (rlxf/commands.py).

Checked: ``import rlxf`` has no side effects (no environment variable, no torch); every command's function
and config is importable from ``rlxf`` and is the table's; the README's "From Python" example runs (on a
tiny model); ``rlxf COMMAND --help`` lists every config key with its help and default; flags derived from
the configs (dotted keys, switches, repeatable lists) and their precedence; one meaning per alias; a
typo'd flag names the nearest one; the CLI's log handler lives only as long as the call.
"""

from __future__ import annotations

import importlib
import logging
import re
import subprocess
import sys
import typing
from dataclasses import MISSING
from pathlib import Path

import pytest

import rlxf
from rlxf.cli import build_config, main, parse_command_line
from rlxf.commands import COMMANDS, COMMON_ALIASES, command, config_keys, flag_aliases
from rlxf.config import describe

README = Path(__file__).parents[1] / "README.md"


def test_import_rlxf_changes_no_environment_and_imports_no_torch():
    check = (
        "import logging, os, sys; env = dict(os.environ); import rlxf; "
        "assert dict(os.environ) == env and 'torch' not in sys.modules; "
        "assert not logging.getLogger('rlxf').handlers; "
        "from rlxf import sft, SFTConfig, RunResult, load_config; assert 'torch' in sys.modules"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


def test_every_command_function_and_config_comes_from_rlxf():
    for entry in COMMANDS:
        function, config = (target.split(":")[1] for target in (entry.function, entry.config))
        assert function in rlxf.__all__ and config in rlxf.__all__, entry.name
        assert getattr(rlxf, function) is entry.library_function(), entry.name
        assert getattr(rlxf, config) is entry.config_class(), entry.name
    names = {"rl", "RLConfig", "sft", "SFTConfig", "reward_train", "RewardTrainConfig", "dpo", "DPOConfig"}
    names |= {"kto", "KTOConfig", "evaluate", "EvalConfig", "generate", "GenerateConfig", "judge"}
    names |= {"sample_candidates", "SampleConfig", "JudgeConfig", "simulate", "SimulateConfig", "demo"}
    names |= {"run_pipeline", "PipelineConfig", "DemoConfig", "load_config", "RunResult"}
    names |= {"parse_reward_spec", "ConfigError", "DataError", "label_export", "label_stage"}
    assert names <= set(rlxf.__all__) <= set(dir(rlxf))
    from rlxf import ConfigError, DataError, RunResult, demo, load_config, parse_reward_spec  # noqa: F401

    importlib.import_module("rlxf.demo")  # the module of the same name does not shadow the function
    assert callable(rlxf.demo) and rlxf.demo.__name__ == "demo"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rlxf.nope  # noqa: B018


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- from-python:[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md has no marked From Python example"
    return match.group(1)


def test_the_readme_from_python_example_runs(tiny_model_dir, tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert code.count('"smollm2-135m-instruct"') == 1
    monkeypatch.chdir(tmp_path)
    # basicConfig in the example configures the root logger; leave the test process's as it was.
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    exec(compile(code.replace('"smollm2-135m-instruct"', repr(str(tiny_model_dir))), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"SFT: loss \d+\.\d{3}, model in runs/py/sft/model", printed), printed
    assert "RL: final mean reward" in printed and "'metrics'" in printed
    assert (tmp_path / "runs" / "py" / "rl" / "model" / "config.json").is_file()


@pytest.mark.parametrize("entry", COMMANDS, ids=lambda e: e.name)
def test_help_lists_every_config_key_with_its_help_and_default(entry, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*entry.name.split(), "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: rlxf {entry.name} ")
    unwrapped = "".join(shown.split())  # argparse wraps lines, at spaces and after hyphens
    assert "".join(entry.summary.split()) in unwrapped
    for key, _, default, help_text in describe(entry.config_class()):
        assert re.search(rf"--{re.escape(key)}[ ,\n]", shown), key
        tail = "required" if default is MISSING else f"default: {default!r}"
        assert "".join(f"{help_text} ({tail})".split()) in unwrapped, key


def test_one_meaning_per_alias():
    for entry in COMMANDS:
        keys = config_keys(entry.config_class())
        for flag, key in flag_aliases(entry, keys).items():
            assert key in keys, (entry.name, flag)
            if flag in COMMON_ALIASES:
                assert key in COMMON_ALIASES[flag], (entry.name, flag)
        assert not set(entry.aliases) & set(COMMON_ALIASES), entry.name  # no command redefines one
    # --batch-size is a training batch only; the other batches have names of their own.
    assert flag_aliases(command("sft"), config_keys(command("sft").config_class()))["--batch-size"] == (
        "train.global_batch_size"
    )
    sample = command("sample")
    assert "--batch-size" not in flag_aliases(sample, config_keys(sample.config_class()))
    assert flag_aliases(sample, config_keys(sample.config_class()))["--sampling-batch-size"] == (
        "sampling.batch_size"
    )
    reward_eval = command("reward eval")
    assert flag_aliases(reward_eval, config_keys(reward_eval.config_class()))["--score-batch-size"] == (
        "batch_size"
    )


def test_flags_are_derived_from_the_config_with_precedence(tmp_path):
    entry = command("sft")
    config = tmp_path / "sft.yaml"
    config.write_text(
        "data: from-file.jsonl\nout: runs/x\ntrain: {learning_rate: 1.0e-3, num_epochs: 3}\nresume: true\n"
    )
    argv = [
        "--config",
        str(config),
        "--train.learning_rate",
        "3e-4",  # beats the override below, which beats the file
        "--resume",
        "false",
        "--model.lora.target_modules",
        "q_proj",
        "--model.lora.target_modules",
        "v_proj",
        "--packing",
        "--lora-r",
        "8",
    ]
    args, options, overrides = parse_command_line(
        entry, argv + ["train.learning_rate=5e-4", "train.num_epochs=2"]
    )
    cfg = build_config(entry, args, options, overrides)
    assert cfg.train.learning_rate == 3e-4 and cfg.train.num_epochs == 2.0  # flag > key=value > file
    assert cfg.data == "from-file.jsonl" and cfg.resume is False and cfg.packing is True
    assert cfg.model.lora.target_modules == ["q_proj", "v_proj"] and cfg.model.lora.r == 8

    args, options, overrides = parse_command_line(
        entry, ["--data", "d.jsonl", "--out", "o", "--no-packing", "--eval-data", "null"]
    )
    cfg = build_config(entry, args, options, overrides)
    assert cfg.packing is False and cfg.eval_data is None


@pytest.mark.parametrize(
    ("argv", "nearest"),
    [
        (["sft", "--learning-rate", "1e-4"], "--train.learning_rate"),
        (["sft", "--epoch", "2"], "--epochs"),
        (["rl", "--num-step", "2"], "--num_steps"),
        (["reward", "eval", "--batch-size", "8"], "--score-batch-size"),
        (["generate", "--temprature=0.5"], "--temperature"),
    ],
)
def test_a_typo_in_a_flag_names_the_nearest_one(argv, nearest, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown option" in err and f"did you mean {nearest}" in err.replace(" / ", " did you mean ")


def test_unknown_command_and_bare_group(capsys):
    assert main(["sfx"]) == 2
    assert "did you mean sft?" in capsys.readouterr().err
    assert main(["reward"]) == 2
    assert "train" in capsys.readouterr().out


def test_the_cli_logs_to_stderr_only_while_it_runs(tmp_path, capsys):
    pytest.importorskip("sqlalchemy")
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    logger = logging.getLogger("rlxf")
    handlers = list(logger.handlers)
    pw = tmp_path / "pw"
    pw.write_text("pw-ann-1\n")
    assert main(["label", "user", "add", "--db", db, "--username", "ann", "--password-file", str(pw)]) == 0
    assert "created labeller 'ann'" in capsys.readouterr().err  # the message alone, on stderr
    assert logger.handlers == handlers
    assert (
        main(["label", "user", "add", "-q", "--db", db, "--username", "bo", "--password-file", str(pw)]) == 0
    )
    assert capsys.readouterr().err == ""


def declared_default(config_cls: type, key: str) -> object:
    """The default a key really has: a section's default_factory may differ from its class's defaults."""
    import dataclasses

    *path, last = key.split(".")
    node: object = None
    cls = config_cls
    for part in path:
        f = {f.name: f for f in dataclasses.fields(cls)}[part]
        node = getattr(node, part) if node is not None else None
        if node is None and f.default_factory is not MISSING:
            node = f.default_factory()
        cls = type(node) if node is not None else typing.get_type_hints(cls)[part]
    if node is not None:
        return getattr(node, last)
    f = {f.name: f for f in dataclasses.fields(cls)}[last]
    return f.default if f.default is not MISSING else f.default_factory()


def test_help_shows_the_defaults_a_section_really_has(capsys):
    entry = command("rl")
    with pytest.raises(SystemExit):
        main(["rl", "--help"])
    unwrapped = "".join(capsys.readouterr().out.split())
    for key in ("train.learning_rate", "train.lr_schedule", "sampling.n"):
        help_text = {k: h for k, _, _, h in describe(entry.config_class())}[key]
        expected = f"{help_text} (default: {declared_default(entry.config_class(), key)!r})"
        assert "".join(expected.split()) in unwrapped, key
