"""The ``rlxf`` command: a thin reader of the command table (:mod:`rlxf.commands`).

For the command named on the line it builds the typed config and calls the library function, then prints
what the function returned. Options come from the config itself: every dotted key is a flag
(``--train.learning_rate 1e-4``, ``--model.dtype float32``; booleans are switches, ``--resume`` /
``--no-resume``; lists repeat, ``--stop A --stop B``), with the config field's own help; a few aliases keep
one short name per meaning (``--lr``, ``--model``, ``-n``: see :mod:`rlxf.commands`). ``--config FILE.yaml``
and ``key=value`` overrides work too. Precedence: defaults < config file < ``key=value`` < flags.

Printing happens here only: library functions log through ``logging.getLogger("rlxf")``, which
:func:`main` writes to stderr (the message alone; ``-v``/``-q`` or ``RLXF_LOG_LEVEL`` set the level).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from rlxf.commands import COMMANDS, COMMON_ALIASES, GROUPS, Command, flag_aliases
from rlxf.config import ConfigError, describe, load_config, merge, parse_overrides, set_dotted

logger = logging.getLogger("rlxf")
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


# ------------------------------------------------------------------------------------- flags from a config


@dataclass
class Option:
    """One config key as a command-line flag."""

    key: str  # dotted config key: the flag --KEY, and the argparse dest
    annotation: Any  # the field's type
    names: list[str]  # its option strings: aliases first, then --KEY

    def members(self) -> tuple[Any, ...]:
        origin = get_origin(self.annotation)
        return get_args(self.annotation) if origin in (Union, types.UnionType) else (self.annotation,)

    @property
    def switch(self) -> bool:
        return {m for m in self.members() if m is not type(None)} == {bool}

    @property
    def repeat(self) -> bool:
        return any(get_origin(m) is list for m in self.members())

    def value(self, raw: str) -> Any:
        """A flag's text -> the value for the config; numbers and YAML read as ``key=value`` reads them."""
        if raw in ("null", "~") and type(None) in self.members():
            return None
        if all(_textual(m) for m in self.members() if m is not type(None)):
            return raw  # a text option keeps what was typed (`--prompt yes` is "yes", not true)
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError:
            return raw

    def metavar(self) -> str:
        kinds = [m for m in self.members() if m is not type(None)]
        tp = kinds[0] if len(kinds) == 1 else Any
        if get_origin(tp) is list:
            tp = (get_args(tp) or (Any,))[0]
        if get_origin(tp) is Literal:
            return "{" + ",".join(str(a) for a in get_args(tp)) + "}"
        return {int: "N", float: "X", str: "TEXT"}.get(tp, "VALUE")


def _textual(tp: Any) -> bool:
    if get_origin(tp) is list:
        return all(_textual(inner) for inner in get_args(tp))
    if get_origin(tp) is Literal:
        return all(isinstance(a, str) for a in get_args(tp))
    return tp is str


def _annotation(config_cls: type, key: str) -> Any:
    tp: Any = config_cls
    for part in key.split("."):
        tp = typing.get_type_hints(tp)[part]
    return tp


def command_parser(entry: Command) -> tuple[argparse.ArgumentParser, list[Option]]:
    """The parser of one command: ``--config``, ``-v``/``-q``, and a flag per config key."""
    config_cls = entry.config_class()
    rows = describe(config_cls)
    aliases = flag_aliases(entry, [key for key, *_ in rows])
    parser = argparse.ArgumentParser(
        prog=f"rlxf {entry.name}",
        usage=f"rlxf {entry.name} [--config FILE.yaml] [flags] [key=value ...]",
        description=entry.summary,
        allow_abbrev=False,  # `--epoch` is a typo to point out, not a prefix of --epochs to guess
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (the keys below)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="fewer log lines (-qq: errors only)")
    group = parser.add_argument_group(
        "config options",
        "every config key, also settable in --config FILE.yaml or as key=value "
        "(defaults < --config < key=value < flags)",
    )
    options = []
    for key, _, default, help_text in rows:
        option = Option(key, _annotation(config_cls, key), [a for a, k in aliases.items() if k == key])
        option.names.append(f"--{key}")
        shown = "required" if default is MISSING else f"default: {default!r}"
        help_line = f"{help_text} ({shown})".replace("%", "%%")
        if option.switch:
            group.add_argument(
                *option.names, dest=key, action=argparse.BooleanOptionalAction, default=None, help=help_line
            )
        else:
            action = "append" if option.repeat else "store"
            metavar = option.metavar()
            group.add_argument(*option.names, dest=key, action=action, metavar=metavar, help=help_line)
        options.append(option)
    return parser, options


def _spell_switches(argv: list[str], options: list[Option]) -> list[str]:
    """``--resume true`` / ``--resume=false`` -> ``--resume`` / ``--no-resume`` (argparse's switch form)."""
    switches = {name for o in options if o.switch for name in o.names if name.startswith("--")}
    spelled: list[str] = []
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name in switches and not eq and i + 1 < len(argv) and argv[i + 1].lower() in _TRUE | _FALSE:
            value, eq = argv[i + 1], "="
            i += 1
        if name in switches and eq and value.lower() in _TRUE | _FALSE:
            spelled.append(name if value.lower() in _TRUE else "--no-" + name[2:])
        else:
            spelled.append(argv[i])
        i += 1
    return spelled


def suggest(flag: str, options: list[Option]) -> Option | None:
    """The option nearest a mistyped ``flag``: ``--learning-rate`` -> ``train.learning_rate``."""
    bare = flag.split("=", 1)[0].lstrip("-").replace("-", "_")
    by_bare = {n.lstrip("-").replace("-", "_"): o for o in options for n in o.names if n.startswith("--")}
    if bare in by_bare:
        return by_bare[bare]
    nested = [option for b, option in by_bare.items() if b.endswith("." + bare)]
    if nested:  # a nested key given without its section
        return nested[0]
    close = difflib.get_close_matches(bare, list(by_bare), n=1, cutoff=0.6)
    return by_bare[close[0]] if close else None


def _unknown_flag(entry: Command, flag: str, options: list[Option]) -> str:
    name = flag.split("=", 1)[0]
    message = f"rlxf {entry.name}: unknown option {name}"
    if name in COMMON_ALIASES:  # a shared alias whose setting this command does not have
        message += f" ({name} sets {' or '.join(COMMON_ALIASES[name])}, which this command has not)"
    nearest = suggest(name, options)
    if nearest is not None:
        message += f"; did you mean {' / '.join(nearest.names)}?"
    return message + f" (`rlxf {entry.name} --help` lists every option)"


def parse_command_line(entry: Command, argv: list[str]) -> tuple[argparse.Namespace, list[Option], list[str]]:
    """``argv`` after the command's name -> (flags, the command's options, ``key=value`` overrides)."""
    parser, options = command_parser(entry)
    args, extras = parser.parse_known_args(_spell_switches(argv, options))
    stray = next((x for x in extras if x.startswith("-") or "=" not in x), None)
    if stray is not None and stray.startswith("-"):
        raise ConfigError(_unknown_flag(entry, stray, options))
    if stray is not None:
        raise ConfigError(f"rlxf {entry.name}: unexpected argument {stray!r} (give --flags or key=value)")
    return args, options, extras


def build_config(
    entry: Command, args: argparse.Namespace, options: list[Option], overrides: list[str]
) -> Any:
    """Defaults < --config file < key=value overrides < flags."""
    from_flags: dict[str, Any] = {}
    for option in options:
        given = getattr(args, option.key)
        if given is None:
            continue
        if option.switch:
            value = given
        elif option.repeat:
            values = [option.value(raw) for raw in given]
            scalar_too = any(get_origin(m) is not list for m in option.members())
            value = values[0] if len(values) == 1 and scalar_too else values
        else:
            value = option.value(given)
        set_dotted(from_flags, option.key, value)
    values = merge(parse_overrides(overrides), from_flags)
    return load_config(entry.config_class(), args.config, values)


# ------------------------------------------------------------------------------ what a command returned


def _print_run(cfg: Any, result: Any) -> int:
    shown = {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}
    print("final metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()), file=sys.stderr)
    print(f"run folder: {result.out} (model in {result.model_dir})", file=sys.stderr)
    return 0


def _print_samples(cfg: Any, samples: list[Any]) -> int:
    if cfg.out:
        print(f"wrote {len(samples)} completions to {cfg.out}", file=sys.stderr)
        return 0
    last_prompt = None
    for s in samples:
        if s.prompt_index != last_prompt:
            print(f"\n=== prompt {s.prompt_index}: {s.prompt!r}")
            last_prompt = s.prompt_index
        print(f"--- sample {s.sample_index} ({s.num_tokens} tokens, {s.finish_reason})")
        print(s.completion)
    return 0


def _print_reward_eval(cfg: Any, metrics: dict[str, float]) -> int:
    from rlxf.algos.reward_eval import format_metrics

    print(format_metrics(metrics))
    return 0


def _print_scores(cfg: Any, records: list[dict[str, Any]]) -> int:
    from rlxf.algos.reward_eval import records_jsonl

    if not cfg.out:  # written to the file otherwise (and logged)
        sys.stdout.write(records_jsonl(records))
    return 0


def _print_demo(cfg: Any, result: Any) -> int:
    if cfg.print_pipeline:
        print(yaml.safe_dump(result.pipeline, sort_keys=False), end="")
    elif result.status == 0:
        print(result.headline(), file=sys.stderr)
    return result.status


# The commands whose result is printed in a way of its own. A training run's RunResult has one form
# everywhere; the other commands write their files and log their figures themselves.
PRINTERS: dict[str, Callable[[Any, Any], int]] = {
    "generate": _print_samples,
    "demo": _print_demo,
    "run": lambda cfg, status: status,
    "reward eval": _print_reward_eval,
    "reward score": _print_scores,
}


def report(entry: Command, cfg: Any, result: Any) -> int:
    """Print what ``entry``'s function returned; the exit status."""
    from rlxf.train.run import RunResult

    if entry.name in PRINTERS:
        return PRINTERS[entry.name](cfg, result)
    if isinstance(result, RunResult):
        return _print_run(cfg, result)
    return 0


# ------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    """The overview parser: commands and groups with their summaries (each command parses its own flags)."""
    parser = argparse.ArgumentParser(
        prog="rlxf", description="Align language models from human, AI or programmatic feedback."
    )
    parser.set_defaults(overview=parser)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    groups: dict[str, Any] = {}
    for entry in COMMANDS:
        *path, last = entry.name.split()
        parent = subparsers
        for depth in range(len(path)):
            group = " ".join(path[: depth + 1])
            if group not in groups:
                group_parser = parent.add_parser(path[depth], help=GROUPS[group], description=GROUPS[group])
                group_parser.set_defaults(overview=group_parser)
                groups[group] = group_parser.add_subparsers(title=f"{group} commands", metavar="COMMAND")
            parent = groups[group]
        parent.add_parser(last, help=entry.summary, add_help=False)
    return parser


def find_command(argv: list[str]) -> tuple[Command | None, list[str]]:
    """The command named by the first words of ``argv`` (the longest match) and the words after it."""
    named = [e for e in COMMANDS if argv[: len(e.name.split())] == e.name.split()]
    if not named:
        return None, argv
    entry = max(named, key=lambda e: len(e.name.split()))
    return entry, argv[len(entry.name.split()) :]


def _no_command(argv: list[str]) -> int:
    """``rlxf``, ``rlxf --help``, ``rlxf reward``, or an unknown command."""
    words = {word for e in COMMANDS for word in e.name.split()}
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in words:
        close = difflib.get_close_matches(first, sorted({e.name.split()[0] for e in COMMANDS}), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        print(f"rlxf: unknown command {first!r}{hint} (`rlxf --help` lists them)", file=sys.stderr)
        return 2
    args, _ = build_parser().parse_known_args(argv)  # --help prints and exits here
    args.overview.print_help()
    return 2


def log_level(verbose: int, quiet: int) -> int:
    """INFO, or ``RLXF_LOG_LEVEL`` (a level name), moved by ``-v`` (down) and ``-q`` (up) steps."""
    base = logging.getLevelName(os.environ.get("RLXF_LOG_LEVEL", "INFO").upper())
    base = base if isinstance(base, int) else logging.INFO
    return min(max(base + 10 * (quiet - verbose), logging.DEBUG), logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "run" and not argv[1].startswith("-") and "=" not in argv[1]:
        argv = ["run", "--config", *argv[1:]]  # `rlxf run FILE.yaml` is `rlxf run --config FILE.yaml`
    entry, rest = find_command(argv)
    if entry is None:
        return _no_command(argv)
    try:
        args, options, overrides = parse_command_line(entry, rest)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    # rlxf never downloads: model loading passes local_files_only; this process also tells the Hugging
    # Face libraries so (before they are imported), which the library leaves to its host program.
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
        os.environ.setdefault(name, "1")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(log_level(args.verbose, args.quiet))
    try:
        return _run(entry, args, options, overrides)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


def entry_point() -> int:
    """The program ``rlxf`` (and ``python -m rlxf``): :func:`main` on the command line, then the exit status.

    A launched process (torchrun, accelerate) ends here, without the interpreter's teardown: there the
    collective backend's worker threads, still held from C++ by objects torch keeps alive (gloo keeps a
    group's threads running after ``destroy_process_group``), are destroyed in no set order, and about one
    launch in ten aborted (SIGABRT, "terminate called without an active exception") after the run had
    finished and saved everything, so the launcher reported the run failed. Everything rlxf writes is
    closed by then (run folder, metrics, checkpoints); the streams are flushed here. :func:`main` itself
    leaves a caller's process group and process alone.
    """
    status = main()
    if _left_process_group():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _left_process_group() -> bool:
    """Leave a launched run's process group (every process at the same point); ``False`` when none."""
    if "torch.distributed" not in sys.modules:  # never imported: no group
        return False
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.destroy_process_group()
    return True


def _run(entry: Command, args: argparse.Namespace, options: list[Option], overrides: list[str]) -> int:
    from transformers.utils import logging as hf_logging

    from rlxf.data.errors import DataError
    from rlxf.feedback.label.stage import LabelsPending
    from rlxf.models.registry import ModelNotFoundError
    from rlxf.pipeline import WAITING_FOR_LABELS
    from rlxf.train.run import RunExistsError

    hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars; rlxf shows its own progress
    try:
        cfg = build_config(entry, args, options, overrides)
    except ConfigError as exc:
        print(f"rlxf {entry.name}: config error: {exc}", file=sys.stderr)
        return 2
    try:
        return report(entry, cfg, entry.library_function()(cfg))
    except LabelsPending as exc:
        print(f"rlxf {entry.name}: waiting for labels. {exc}", file=sys.stderr)
        return WAITING_FOR_LABELS
    except (DataError, ConfigError, ModelNotFoundError, RunExistsError, ValueError, FileNotFoundError) as exc:
        # Bad input found before any work (a data record, a model reference, an option, an --out folder
        # holding another run): a clear message, no traceback. RLXF_DEBUG=1 shows the traceback.
        if os.environ.get("RLXF_DEBUG"):
            raise
        print(f"rlxf {entry.name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlxf {entry.name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
