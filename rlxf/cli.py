"""The ``rlxf`` command. Each sub-command is a thin shell over a library function of the same name.

Every sub-command takes ``--config FILE.yaml`` and ``key=value`` overrides (dotted keys for nested
options, e.g. ``model.dtype=float32 sampling.top_p=0.9``); a few common options also have flags that keep
one name everywhere (``--model``, ``--prompts``, ``--prompt``, ``--out``, ``--seed`` ...). Precedence:
defaults < config file < ``key=value`` overrides < flags. ``--help`` lists every option with its help.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field
from typing import Any

from rlxf.config import ConfigError, describe, load_config, merge, parse_overrides, set_dotted
from rlxf.data import DataError
from rlxf.models.registry import ModelNotFoundError


@dataclass
class Flag:
    """A command-line flag that sets one config key."""

    names: tuple[str, ...]
    key: str  # dotted config key
    help: str
    type: Callable[[str], Any] = str
    repeat: bool = False  # may be given several times; values collect into a list


@dataclass
class Command:
    name: str
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
        command.name,
        help=command.summary,
        description=command.summary,
        epilog=_options_epilog(command.config_cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (see the list below)")
    for flag in command.flags:
        parser.add_argument(
            *flag.names,
            dest=flag.key,
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


def _run_demo(cfg: Any) -> int:
    from rlxf.demo import demo

    return demo(cfg)


def _commands() -> list[Command]:
    from rlxf.demo import DemoConfig
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
            "The embedded default's main job on the default model (SmolLM2-135M-Instruct).",
            DemoConfig,
            _run_demo,
            [*model_flags, Flag(("--seed",), "seed", "random seed", int)],
        ),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlxf",
        description="Align language models from human, AI or programmatic feedback.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(command=None)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in _commands():
        _add_command(subparsers, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
    except (DataError, ModelNotFoundError) as exc:
        # Bad input found before any work (a data record, a model reference): a clear message, no traceback.
        print(f"rlxf {args.command.name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlxf {args.command.name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
