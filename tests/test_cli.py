"""The ``rlxf`` command: generate, config files, overrides, errors, help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlxf.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_prints_completions_deterministically(capsys, tiny_model_dir):
    def argv(seed: int) -> list[str]:
        return [
            "generate",
            "--model",
            str(tiny_model_dir),
            "--prompt",
            "The movie was",
            "-n",
            "3",
            "--seed",
            str(seed),
            "--max-new-tokens",
            "8",
            "model.dtype=float32",
        ]

    code, first, _ = run_cli(capsys, *argv(1))
    assert code == 0
    assert first.count("--- sample") == 3 and "=== prompt 0: 'The movie was'" in first
    _, again, _ = run_cli(capsys, *argv(1))
    assert again == first
    _, other, _ = run_cli(capsys, *argv(2))
    assert other != first


def test_generate_from_file_to_jsonl(capsys, tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "The restaurant"})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "Say something nice."}]})
        + "\n"
    )
    out = tmp_path / "out" / "samples.jsonl"
    code, _, err = run_cli(
        capsys,
        "generate",
        "--model",
        str(tiny_model_dir),
        "--prompts",
        str(prompts),
        "-n",
        "2",
        "--seed",
        "0",
        "--max-new-tokens",
        "6",
        "--out",
        str(out),
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt_index"] for r in rows] == [0, 0, 1, 1]
    assert [r["sample_index"] for r in rows] == [0, 1, 0, 1]
    assert rows[0]["prompt"] == "The restaurant"
    assert rows[2]["prompt"] == [{"role": "user", "content": "Say something nice."}]
    for r in rows:
        assert r["finish_reason"] in {"eos", "length", "stop"}
        assert 1 <= r["num_tokens"] <= 6 and r["logprob"] < 0


def test_config_file_and_precedence(capsys, tiny_model_dir, tmp_path):
    config = tmp_path / "gen.yaml"
    config.write_text(
        f"model:\n  name_or_path: {tiny_model_dir}\n  dtype: float32\n"
        "sampling:\n  max_new_tokens: 4\n  n: 5\nprompt: [hello]\nseed: 3\n"
    )
    code, out, err = run_cli(capsys, "generate", "--config", str(config), "sampling.n=2", "-n", "1")
    assert code == 0, err
    assert out.count("--- sample") == 1  # the flag beats the override, which beats the file


def test_unknown_key_is_a_clear_error_with_a_suggestion(capsys, tiny_model_dir):
    code, _, err = run_cli(
        capsys, "generate", "--model", str(tiny_model_dir), "--prompt", "x", "sampling.temprature=0.5"
    )
    assert code == 2
    assert "unknown config key sampling.temprature" in err and "Did you mean sampling.temperature?" in err


def test_bad_prompt_file_stops_before_the_model_loads(capsys, tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": ""}\n')
    # The model reference does not exist: if the data check did not come first, the error would be about it.
    code, _, err = run_cli(capsys, "generate", "--model", str(tmp_path / "no-model"), "--prompts", str(bad))
    assert code == 2
    assert "prompts.jsonl" in err and "line 2" in err and "prompt" in err


def test_missing_prompts_and_unknown_model(capsys, tmp_path):
    code, _, err = run_cli(capsys, "generate")
    assert code == 2 and "--prompts FILE or --prompt TEXT" in err
    code, _, err = run_cli(capsys, "generate", "--model", "no-such-model", "--prompt", "x")
    assert code == 2 and "no-such-model" in err and "never downloads" in err


def test_help_lists_every_option():
    result = subprocess.run(
        [sys.executable, "-m", "rlxf", "generate", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for key in (
        "model.name_or_path",
        "model.lora.r",
        "sampling.top_p",
        "sampling.stop",
        "chat_template",
        "seed",
    ):
        assert key in result.stdout
    assert "nucleus sampling" in result.stdout


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"]])
def test_console_script_and_module_agree(argv):
    module = subprocess.run([sys.executable, "-m", "rlxf", *argv], capture_output=True, text=True)
    script = subprocess.run(
        [sys.executable, "-c", "import sys; from rlxf.cli import main; sys.exit(main())", *argv],
        capture_output=True,
        text=True,
    )
    assert module.returncode == script.returncode == 0
    assert module.stdout == script.stdout and module.stdout.startswith("usage: rlxf")


def test_training_commands_through_the_cli(capsys, tiny_model_dir, tmp_path):
    """sft, reward train / eval / score and dpo run from the command line with the shared flags."""
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(
        "".join(
            json.dumps({"prompt": f"Item {i}: the movie was", "chosen": " good", "rejected": " bad"}) + "\n"
            for i in range(16)
        )
    )
    sft_data = tmp_path / "sft.jsonl"
    sft_data.write_text(
        "".join(json.dumps({"prompt": f"Q{i}", "completion": " yes"}) + "\n" for i in range(8))
    )
    common = [
        "--model",
        str(tiny_model_dir),
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--micro-batch-size",
        "4",
        "--precision",
        "fp32",
    ]

    # A finished run keeps its last checkpoint only when asked (a derived switch, given as `--KEY true`).
    keep = ["--train.keep_final_checkpoint", "true"]
    code, _, err = run_cli(
        capsys, "sft", "--data", str(sft_data), "--out", str(tmp_path / "sft"), *common, *keep
    )
    assert code == 0, err
    assert (tmp_path / "sft" / "model" / "config.json").is_file() and "run folder" in err
    assert "keep_final_checkpoint: true" in (tmp_path / "sft" / "config.yaml").read_text()
    # The same --out again is refused with a clear message, --resume continues (nothing left to do here).
    code, _, err = run_cli(capsys, "sft", "--data", str(sft_data), "--out", str(tmp_path / "sft"), *common)
    assert code == 2 and "--resume" in err
    code, _, err = run_cli(
        capsys, "sft", "--data", str(sft_data), "--out", str(tmp_path / "sft"), *common, "--resume"
    )
    assert code == 0, err

    code, _, err = run_cli(
        capsys, "reward", "train", "--data", str(prefs), "--out", str(tmp_path / "rm"), *common
    )
    assert code == 0, err
    code, out, err = run_cli(capsys, "reward", "eval", "--model", str(tmp_path / "rm"), "--data", str(prefs))
    assert code == 0, err
    assert "accuracy" in out and "ties" in out
    scores = tmp_path / "scores.jsonl"
    code, _, err = run_cli(
        capsys, "reward", "score", "--model", str(tmp_path / "rm"), "--data", str(prefs), "--out", str(scores)
    )
    assert code == 0, err
    assert all("reward_chosen" in json.loads(line) for line in scores.read_text().splitlines())

    code, _, err = run_cli(
        capsys,
        "dpo",
        "--data",
        str(prefs),
        "--out",
        str(tmp_path / "dpo"),
        *common,
        "--beta",
        "0.2",
        "train.learning_rate=1e-4",
    )
    assert code == 0, err
    assert "beta: 0.2" in (tmp_path / "dpo" / "config.yaml").read_text()


def test_rl_through_the_cli(capsys, tiny_model_dir, tmp_path):
    """`rlxf rl` with the shared flags and dotted overrides; a bad reward spec is one clear line, exit 2."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Review {i}: the film was"}) + "\n" for i in range(8)))
    args = [
        "rl",
        "--model",
        str(tiny_model_dir),
        "--prompts",
        str(prompts),
        "--reward",
        "sentiment",
        "--estimator",
        "rloo",
        "--steps",
        "1",
        "-n",
        "2",
        "--prompts-per-step",
        "4",
        "--max-new-tokens",
        "4",
        "--precision",
        "fp32",
        "--out",
        str(tmp_path / "rl"),
        "micro_batch_size=8",
        "kl.coef=0.1",
    ]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert (tmp_path / "rl" / "model" / "config.json").is_file() and "run folder" in err
    record = json.loads((tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 1 and "reward/mean" in record and record["kl_coef"] == 0.1

    out_at = args.index("--out") + 1
    bad = [a if a != "sentiment" else "fn:missing_file.py:score" for a in args]
    bad[out_at] = str(tmp_path / "x")
    code, _, err = run_cli(capsys, *bad)
    assert code == 2 and "missing_file.py" in err
    assert not (tmp_path / "x").exists()
