"""The ``rlxf`` command. Each sub-command is a thin shell over a library function of the same name.

Every sub-command takes ``--config FILE.yaml`` and ``key=value`` overrides (dotted keys for nested
options, e.g. ``model.dtype=float32 sampling.top_p=0.9``); a few common options also have flags that keep
one name everywhere (``--model``, ``--prompts``, ``--prompt``, ``--out``, ``--seed`` ...). Precedence:
defaults < config file < ``key=value`` overrides < flags. ``--help`` lists every option with its help.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field
from typing import Any

from rlxf.config import ConfigError, describe, load_config, merge, parse_overrides, set_dotted
from rlxf.data import DataError
from rlxf.models.registry import ModelNotFoundError
from rlxf.train.run import RunExistsError


@dataclass
class Flag:
    """A command-line flag that sets one config key."""

    names: tuple[str, ...]
    key: str  # dotted config key
    help: str
    type: Callable[[str], Any] = str
    repeat: bool = False  # may be given several times; values collect into a list
    switch: bool = False  # takes no value: present means true


@dataclass
class Command:
    name: str  # "generate", or "group sub" for grouped commands ("reward train")
    summary: str
    config_cls: type
    run: Callable[[Any], int]
    flags: list[Flag] = field(default_factory=list)


def _options_epilog(config_cls: type) -> str:
    lines = ["options (set in --config FILE.yaml or as key=value):"]
    for key, type_name, default, help_text in describe(config_cls):
        shown = "required" if default is MISSING else f"default {default!r}"
        lines.append(f"  {key} ({type_name}; {shown})")
        lines.extend(textwrap.wrap(help_text, width=88, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


def _add_command(subparsers: Any, command: Command) -> None:
    parser = subparsers.add_parser(
        command.name.split()[-1],
        help=command.summary,
        description=command.summary,
        epilog=_options_epilog(command.config_cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (see the list below)")
    for flag in command.flags:
        if flag.switch:
            parser.add_argument(
                *flag.names,
                dest=flag.key,
                action="store_const",
                const=True,
                default=None,
                help=f"{flag.help} (sets {flag.key}=true)",
            )
            continue
        parser.add_argument(
            *flag.names,
            dest=flag.key,
            metavar=flag.names[-1].lstrip("-").upper().replace("-", "_"),
            type=flag.type,
            action="append" if flag.repeat else "store",
            default=None,
            help=f"{flag.help} (sets {flag.key})",
        )
    # key=value overrides may stand anywhere among the flags; main() collects them (see _split_overrides).
    parser.usage = f"rlxf {command.name} [--config FILE.yaml] [flags] [key=value ...]"
    parser.set_defaults(command=command)


def _split_overrides(parser: argparse.ArgumentParser, extras: list[str]) -> list[str]:
    """Arguments argparse did not take must all be ``key=value`` overrides."""
    bad = [item for item in extras if item.startswith("-") or "=" not in item]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (options are --flags or key=value)")
    return extras


def build_config(command: Command, args: argparse.Namespace, overrides: list[str]) -> Any:
    """Defaults < --config file < key=value overrides < flags."""
    values = parse_overrides(overrides)
    from_flags: dict[str, Any] = {}
    for flag in command.flags:
        value = getattr(args, flag.key)
        if value is not None:
            set_dotted(from_flags, flag.key, value)
    return load_config(command.config_cls, args.config, merge(values, from_flags))


# --------------------------------------------------------------------------------------------- commands


def _run_generate(cfg: Any) -> int:
    from rlxf.rollout.generate import generate

    print(
        f"rlxf generate: model={cfg.model.name_or_path} n={cfg.sampling.n} "
        f"max_new_tokens={cfg.sampling.max_new_tokens} temperature={cfg.sampling.temperature} seed={cfg.seed}",
        file=sys.stderr,
    )
    start = time.perf_counter()
    samples = generate(cfg)
    if cfg.out:
        print(
            f"wrote {len(samples)} completions to {cfg.out} ({time.perf_counter() - start:.1f} s)",
            file=sys.stderr,
        )
        return 0
    last_prompt = None
    for s in samples:
        if s.prompt_index != last_prompt:
            print(f"\n=== prompt {s.prompt_index}: {s.prompt!r}")
            last_prompt = s.prompt_index
        print(f"--- sample {s.sample_index} ({s.num_tokens} tokens, {s.finish_reason})")
        print(s.completion)
    return 0


def _run_training(fn: Callable[[Any], dict[str, float]]) -> Callable[[Any], int]:
    """A training command: run the learner, then print where its results are."""

    def run(cfg: Any) -> int:
        final = fn(cfg)
        shown = {k: v for k, v in final.items() if isinstance(v, int | float)}
        print("final metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()), file=sys.stderr)
        print(f"run folder: {cfg.out} (model in {cfg.out}/model)", file=sys.stderr)
        return 0

    return run


def _run_returning(fn: Callable[[Any], Any]) -> Callable[[Any], int]:
    """A command whose library function prints (or writes) its own results."""

    def run(cfg: Any) -> int:
        fn(cfg)
        return 0

    return run


def _run_demo(cfg: Any) -> int:
    from rlxf.demo import demo

    return demo(cfg)


def _commands() -> list[Command]:
    from rlxf.algos.dpo import DPOConfig, dpo
    from rlxf.algos.kto import KTOConfig, kto
    from rlxf.algos.reward_eval import RewardEvalConfig, RewardScoreConfig, reward_eval, reward_score
    from rlxf.algos.reward_model import RewardTrainConfig, reward_train
    from rlxf.algos.rl import RLConfig, rl
    from rlxf.algos.sft import SFTConfig, sft
    from rlxf.demo import DemoConfig
    from rlxf.eval.evaluate import EvalConfig, evaluate
    from rlxf.feedback.judge import JudgeConfig, judge
    from rlxf.feedback.label.commands import (
        LabelExportConfig,
        LabelProjectCreateConfig,
        LabelPushConfig,
        LabelServeConfig,
        LabelUserAddConfig,
        label_export,
        label_project_create,
        label_push,
        label_serve,
        label_user_add,
    )
    from rlxf.feedback.simulate import SimulateConfig, simulate
    from rlxf.pipeline import PipelineConfig, run_pipeline
    from rlxf.rollout.candidates import SampleConfig, sample_candidates
    from rlxf.rollout.generate import GenerateConfig

    model_flags = [
        Flag(("--model",), "model.name_or_path", "model reference: registry name, HF folder or .gguf file"),
        Flag(("--dtype",), "model.dtype", "precision: auto, float32, bfloat16, float16"),
        Flag(("--device",), "model.device", "auto, cpu or cuda"),
    ]
    sampling_flags = [
        Flag(("-n", "--num-samples"), "sampling.n", "completions per prompt", int),
        Flag(("--max-new-tokens",), "sampling.max_new_tokens", "most tokens per completion", int),
        Flag(("--temperature",), "sampling.temperature", "sampling temperature (0 = greedy)", float),
        Flag(("--top-p",), "sampling.top_p", "nucleus sampling mass", float),
        Flag(("--top-k",), "sampling.top_k", "top-k sampling (0 = off)", int),
        Flag(("--stop",), "sampling.stop", "stop string (repeat for several)", repeat=True),
        Flag(("--batch-size",), "sampling.batch_size", "sequences generated together", int),
    ]
    training_flags = [
        Flag(("--model",), "model.name_or_path", "model reference: registry name, HF folder or .gguf file"),
        Flag(("--device",), "model.device", "auto, cpu or cuda"),
        Flag(("--lora-r",), "model.lora.r", "LoRA rank (0 = full fine-tuning)", int),
        Flag(("--data",), "data", "training data file"),
        Flag(("--eval-data",), "eval_data", "held-out data file"),
        Flag(("--eval-split",), "eval_split", "share of --data held out when --eval-data is unset", float),
        Flag(("--out",), "out", "output folder"),
        Flag(("--seed",), "seed", "random seed", int),
        Flag(("--resume",), "resume", "continue the run in --out from its latest checkpoint", switch=True),
        Flag(("--overwrite",), "overwrite", "replace the run already in --out", switch=True),
        Flag(("--lr",), "train.learning_rate", "peak learning rate", float),
        Flag(("--epochs",), "train.num_epochs", "passes over the data", float),
        Flag(("--max-steps",), "train.max_steps", "optimizer steps (overrides --epochs)", int),
        Flag(("--batch-size",), "train.global_batch_size", "examples per optimizer step", int),
        Flag(("--micro-batch-size",), "train.micro_batch_size", "examples per forward/backward pass", int),
        Flag(("--precision",), "train.precision", "auto, fp32, bf16-mixed or bf16"),
    ]
    scoring_flags = [
        Flag(("--model",), "model", "a trained reward model: its run folder or model/ folder"),
        Flag(("--data",), "data", "data file"),
        Flag(("--batch-size",), "batch_size", "inputs per forward pass", int),
        Flag(("--device",), "device", "auto, cpu or cuda"),
    ]
    label_project_flags = [
        Flag(("--db",), "db", "database URL (sqlite:///FILE, postgresql://...) or SQLite path"),
        Flag(("--name",), "name", "project name (unique)"),
        Flag(("--kind",), "kind", "pairwise, ranking or rating"),
        Flag(("--labels-per-item",), "labels_per_item", "answers each item needs (k)", int),
        Flag(("--guidelines",), "guidelines", "text file of guidelines for labellers"),
        Flag(("--aspect",), "aspects", "rating aspect (repeat for several)", repeat=True),
        Flag(("--scale",), "scale", "ratings run 1..N", int),
        Flag(("--ask-reason",), "ask_reason", "off, optional or required"),
        Flag(("--member",), "members", "username allowed to label (repeat for several)", repeat=True),
    ]
    return [
        Command(
            "generate",
            "Sample completions from a model for prompts in a file or on the command line.",
            GenerateConfig,
            _run_generate,
            [
                *model_flags,
                Flag(("--prompts",), "prompts", "prompt file (JSONL, CSV, Parquet or datasets folder)"),
                Flag(("--prompt",), "prompt", "prompt text (repeat for several)", repeat=True),
                *sampling_flags,
                Flag(("--seed",), "seed", "random seed", int),
                Flag(("--out",), "out", "write completions to this .jsonl file"),
            ],
        ),
        Command(
            "demo",
            "The main job on the default model: samples -> simulated feedback -> reward model -> PPO -> eval "
            "and report, on this machine (about 9 minutes on 2 CPU cores).",
            DemoConfig,
            _run_demo,
            [
                Flag(("--model",), "model", "the policy: registry name, HF folder or .gguf file"),
                Flag(("--out",), "out", "the demo's folder"),
                Flag(("--seed",), "seed", "random seed", int),
                Flag(("--rl-steps",), "rl_steps", "PPO steps", int),
                Flag(
                    ("--print-pipeline",),
                    "print_pipeline",
                    "print the pipeline as YAML and stop",
                    switch=True,
                ),
            ],
        ),
        Command(
            "sft",
            "Supervised fine-tuning on prompt/completion or messages data (loss on completions only).",
            SFTConfig,
            _run_training(sft),
            [
                *training_flags,
                Flag(("--max-length",), "max_length", "longest example in tokens", int),
                Flag(("--packing",), "packing", "pack examples into rows of max_length", switch=True),
            ],
        ),
        Command(
            "reward train",
            "Train a reward model on preferences (Bradley-Terry) or ratings (MSE per aspect).",
            RewardTrainConfig,
            _run_training(reward_train),
            training_flags,
        ),
        Command(
            "reward eval",
            "Accuracy on held-out preferences (ties apart), or MSE / Spearman on held-out ratings.",
            RewardEvalConfig,
            _run_returning(reward_eval),
            [*scoring_flags, Flag(("--out",), "out", "folder to write eval.json into")],
        ),
        Command(
            "reward score",
            "Score every completion of a file with a reward model; writes JSONL with a reward field.",
            RewardScoreConfig,
            _run_returning(reward_score),
            [*scoring_flags, Flag(("--out",), "out", "JSONL file to write")],
        ),
        Command(
            "dpo",
            "Direct preference optimisation: DPO (sigmoid), conservative DPO (label smoothing) or IPO.",
            DPOConfig,
            _run_training(dpo),
            [
                *training_flags,
                Flag(("--beta",), "beta", "strength of the KL regularisation", float),
                Flag(("--loss-type",), "loss_type", "sigmoid or ipo"),
            ],
        ),
        Command(
            "kto",
            "Kahneman-Tversky optimisation on unpaired data (prompt, completion, label).",
            KTOConfig,
            _run_training(kto),
            [*training_flags, Flag(("--beta",), "beta", "strength of the KL regularisation", float)],
        ),
        Command(
            "rl",
            "Online RL from feedback: PPO with a critic, GRPO, RLOO or REINFORCE++ against a reward source.",
            RLConfig,
            _run_training(rl),
            [
                Flag(("--model",), "model.name_or_path", "policy: registry name, HF folder or .gguf file"),
                Flag(("--device",), "model.device", "auto, cpu or cuda"),
                Flag(("--lora-r",), "model.lora.r", "LoRA rank (0 = full fine-tuning)", int),
                Flag(("--prompts",), "prompts", "prompts file"),
                Flag(("--prompts-split",), "prompts_split", "use only prompt records with this `split`"),
                Flag(("--eval-prompts",), "eval_prompts", "held-out prompts file"),
                Flag(
                    ("--reward",),
                    "reward",
                    "reward spec: sentiment, model:PATH, fn:FILE:FUNC, judge:MODEL, URL",
                ),
                Flag(("--estimator",), "estimator", "ppo, grpo, rloo or reinforce++"),
                Flag(("--out",), "out", "output folder"),
                Flag(("--seed",), "seed", "random seed", int),
                Flag(
                    ("--resume",),
                    "resume",
                    "continue the run in --out from its latest checkpoint",
                    switch=True,
                ),
                Flag(("--overwrite",), "overwrite", "replace the run already in --out", switch=True),
                Flag(("--lr",), "learning_rate", "peak policy learning rate", float),
                Flag(("--steps",), "num_steps", "rollout + update steps", int),
                Flag(("-n", "--num-samples"), "sampling.n", "completions per prompt", int),
                Flag(("--max-new-tokens",), "sampling.max_new_tokens", "most tokens per completion", int),
                Flag(("--prompts-per-step",), "prompts_per_step", "prompts per rollout batch", int),
                Flag(("--precision",), "precision", "auto, fp32, bf16-mixed or bf16"),
            ],
        ),
        Command(
            "sample",
            "Sample n responses per prompt and group them (pairs by default) into candidates records for feedback.",
            SampleConfig,
            _run_returning(sample_candidates),
            [
                *model_flags,
                Flag(("--prompts",), "prompts", "prompts file"),
                Flag(("--prompts-split",), "prompts_split", "use only prompt records with this `split`"),
                Flag(("--group",), "group", "responses per candidates record (2: pairs)", int),
                Flag(("-n", "--num-samples"), "sampling.n", "completions per prompt", int),
                Flag(("--max-new-tokens",), "sampling.max_new_tokens", "most tokens per completion", int),
                Flag(("--max-prompts",), "max_prompts", "sample for the first N prompts only", int),
                Flag(("--out",), "out", "output folder"),
                Flag(("--overwrite",), "overwrite", "replace the samples already in --out", switch=True),
                Flag(("--seed",), "seed", "sampling seed", int),
            ],
        ),
        Command(
            "run",
            "Run a pipeline FILE.yaml (sample -> feedback -> reward model -> RL or DPO -> eval); re-running "
            "continues where it stopped. Exit status 3: a labelling stage waits for people.",
            PipelineConfig,
            run_pipeline,
            [Flag(("--stop-after",), "stop_after", "run the stages up to this one, then stop")],
        ),
        Command(
            "eval",
            "Compare a policy with its baseline on held-out prompts: reward, KL, win rate, fluency, "
            "diversity; writes summary.json and report.html.",
            EvalConfig,
            _run_returning(evaluate),
            [
                Flag(("--model",), "model.name_or_path", "the policy: model reference or rlxf run folder"),
                Flag(
                    ("--baseline",), "baseline", "model to compare with (default: the run's starting model)"
                ),
                Flag(("--prompts",), "prompts", "held-out prompts file"),
                Flag(("--prompts-split",), "prompts_split", "use only prompt records with this `split`"),
                Flag(
                    ("--reward",),
                    "reward",
                    "gold reward spec: sentiment, model:PATH, fn:FILE:FUNC, judge:MODEL, URL",
                ),
                Flag(
                    ("--win-reward",), "win_reward", "reward spec deciding the win rate (default: --reward)"
                ),
                Flag(
                    ("--win-judge",), "win_judge", "judge model comparing each pair in both orders (win rate)"
                ),
                Flag(("--run",), "run", "training run folder whose metrics the report plots"),
                Flag(("--out",), "out", "output folder"),
                Flag(("--overwrite",), "overwrite", "replace the evaluation already in --out", switch=True),
                Flag(("--seed",), "seed", "sampling seed", int),
                Flag(("-n", "--num-samples"), "sampling.n", "completions per prompt", int),
                Flag(("--max-new-tokens",), "sampling.max_new_tokens", "most tokens per completion", int),
                Flag(("--max-prompts",), "max_prompts", "evaluate the first N prompts only", int),
                Flag(("--precision",), "precision", "auto, fp32 or bf16-mixed"),
                Flag(("--device",), "model.device", "auto, cpu or cuda"),
            ],
        ),
        Command(
            "judge",
            "AI feedback: a judge model compares response pairs (both orders) or rates responses from a rubric.",
            JudgeConfig,
            _run_returning(judge),
            [
                Flag(
                    ("--data",),
                    "data",
                    "candidates JSONL ({prompt, responses: [a, b]}) or a preferences file",
                ),
                Flag(("--out",), "out", "output folder"),
                Flag(("--overwrite",), "overwrite", "replace the judge output already in --out", switch=True),
                Flag(("--mode",), "mode", "pairwise or pointwise"),
                Flag(
                    ("--model",), "model.name_or_path", "judge model: registry name, HF folder or .gguf file"
                ),
                Flag(("--device",), "model.device", "auto, cpu or cuda"),
                Flag(("--dtype",), "model.dtype", "precision: auto, float32, bfloat16, float16"),
                Flag(("--judge-url",), "judge_url", "OpenAI-compatible API base URL (http://host:port/v1)"),
                Flag(("--judge-model",), "judge_model", "model name sent to --judge-url"),
                Flag(("--template",), "template", "rubric file with {prompt} {response_a} {response_b}"),
                Flag(("--reasoning",), "reasoning", "write a rationale before the verdict", switch=True),
                Flag(("--min-confidence",), "min_confidence", "drop pairs below this confidence", float),
                Flag(("--labels",), "labels", "preferences file of labels to measure agreement against"),
                Flag(("--limit",), "limit", "judge only the first N records", int),
                Flag(("--batch-size",), "batch_size", "judge inputs per forward pass", int),
            ],
        ),
        Command(
            "simulate",
            "Simulated annotators: label pairs with an oracle reward plus label noise and position bias.",
            SimulateConfig,
            _run_returning(simulate),
            [
                Flag(
                    ("--data",),
                    "data",
                    "candidates JSONL ({prompt, responses: [a, b]}) or a preferences file",
                ),
                Flag(
                    ("--reward",),
                    "reward",
                    "the oracle: sentiment, model:PATH, fn:FILE:FUNC, judge:MODEL, URL",
                ),
                Flag(("--out",), "out", "output folder"),
                Flag(("--overwrite",), "overwrite", "replace the output already in --out", switch=True),
                Flag(("--mode",), "mode", "pairwise or pointwise"),
                Flag(
                    ("--noise",), "noise", "flip probability (repeat: one per annotator)", float, repeat=True
                ),
                Flag(
                    ("--position-bias",),
                    "position_bias",
                    "probability of picking the first-shown response (repeat: one per annotator)",
                    float,
                    repeat=True,
                ),
                Flag(("--annotators",), "annotators", "annotators in the pool", int),
                Flag(("--labels",), "labels", "preferences file of labels to measure agreement against"),
                Flag(("--limit",), "limit", "label only the first N records", int),
                Flag(("--seed",), "seed", "random seed", int),
            ],
        ),
        Command(
            "label serve",
            "Serve the labelling web app (migrates the database first).",
            LabelServeConfig,
            _run_returning(label_serve),
            [
                Flag(("--db",), "db", "database URL (sqlite:///FILE, postgresql://...) or SQLite path"),
                Flag(("--host",), "host", "address to listen on"),
                Flag(("--port",), "port", "TCP port", int),
            ],
        ),
        Command(
            "label user add",
            "Create a labeller (or, with --admin, an admin) account.",
            LabelUserAddConfig,
            _run_returning(label_user_add),
            [
                Flag(("--db",), "db", "database URL (sqlite:///FILE, postgresql://...) or SQLite path"),
                Flag(("--username",), "username", "account name"),
                Flag(("--password-file",), "password_file", "file whose first line is the password"),
                Flag(("--password",), "password", "the password (prefer --password-file)"),
                Flag(("--admin",), "admin", "make the account an admin", switch=True),
            ],
        ),
        Command(
            "label project create",
            "Create a labelling project from a candidates JSONL file ({prompt, responses: [...]} per line).",
            LabelProjectCreateConfig,
            _run_returning(label_project_create),
            label_project_flags + [Flag(("--data",), "data", "candidates JSONL file")],
        ),
        Command(
            "label push",
            "Create a labelling project from a model's responses to prompts (n per prompt).",
            LabelPushConfig,
            _run_returning(label_push),
            label_project_flags
            + [
                Flag(
                    ("--model",),
                    "model.name_or_path",
                    "model reference: registry name, HF folder or .gguf file",
                ),
                Flag(("--device",), "model.device", "auto, cpu or cuda"),
                Flag(("--prompts",), "prompts", "prompts file"),
                Flag(("-n", "--num-samples"), "sampling.n", "responses per prompt", int),
                Flag(("--max-new-tokens",), "sampling.max_new_tokens", "most tokens per response", int),
                Flag(("--temperature",), "sampling.temperature", "sampling temperature (0 = greedy)", float),
                Flag(("--seed",), "seed", "random seed", int),
            ],
        ),
        Command(
            "label export",
            "Export a project's answers: preferences (majority / Bradley-Terry), ratings (mean) or raw.",
            LabelExportConfig,
            _run_returning(label_export),
            [
                Flag(("--db",), "db", "database URL (sqlite:///FILE, postgresql://...) or SQLite path"),
                Flag(("--project",), "project", "project name"),
                Flag(("--format",), "format", "preferences, ratings or raw"),
                Flag(("--out",), "out", "JSONL file to write"),
                Flag(("--min-labels",), "min_labels", "skip items with fewer answers (default k)", int),
            ],
        ),
    ]


GROUP_HELP = {
    "label": "The labelling web app: people judge model outputs; accounts, projects, export.",
    "label user": "Accounts of the labelling app.",
    "label project": "Labelling projects.",
    "reward": "Reward models: train one from preferences or ratings, evaluate it, score data with it.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlxf",
        description="Align language models from human, AI or programmatic feedback.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(command=None)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    groups: dict[str, Any] = {}
    for command in _commands():
        # A grouped command (`rlxf reward train`, `rlxf label user add`) goes under its group(s).
        *path, _ = command.name.split()
        parent = subparsers
        for depth in range(len(path)):
            group = " ".join(path[: depth + 1])
            if group not in groups:
                group_parser = parent.add_parser(
                    path[depth], help=GROUP_HELP[group], description=GROUP_HELP[group]
                )
                group_parser.set_defaults(command=None)
                groups[group] = group_parser.add_subparsers(title=f"{group} commands", metavar="COMMAND")
            parent = groups[group]
        _add_command(parent, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "run" and not argv[1].startswith("-") and "=" not in argv[1]:
        argv = ["run", "--config", *argv[1:]]  # `rlxf run FILE.yaml` is `rlxf run --config FILE.yaml`
    args, extras = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    overrides = _split_overrides(parser, extras)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars; rlxf shows its own progress
    try:
        cfg = build_config(args.command, args, overrides)
    except ConfigError as exc:
        print(f"rlxf {args.command.name}: config error: {exc}", file=sys.stderr)
        return 2
    try:
        return args.command.run(cfg)
    except (DataError, ConfigError, ModelNotFoundError, RunExistsError, ValueError, FileNotFoundError) as exc:
        # Bad input found before any work (a data record, a model reference, an option, an --out folder
        # holding another run): a clear message, no traceback. RLXF_DEBUG=1 shows the traceback.
        if os.environ.get("RLXF_DEBUG"):
            raise
        print(f"rlxf {args.command.name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlxf {args.command.name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
