"""The command table: every rlxf command once, read by the CLI (``rlxf/cli.py``), by ``rlxf run``
(``rlxf/pipeline.py``) and by the package's lazy exports (``rlxf/__init__.py``).

An entry names the command, says what it does in one line, and points at its typed config and its library
function as ``"module:attr"`` strings, imported only when used: reading the table imports no torch. The
CLI derives its flags from the config (every dotted key is a flag, ``--train.learning_rate``); the entry
adds only short aliases. ``stage`` is the ``kind:`` the command has in a pipeline file, or ``None`` for a
command that cannot be a stage (:data:`NOT_STAGES` says why, one reason each).

Flag aliases, one name per meaning:

* :data:`COMMON_ALIASES` are shared by every command whose config has the key they stand for
  (``--lr`` is ``train.learning_rate`` wherever there is one; ``--batch-size`` is only ever
  ``train.global_batch_size``);
* every top-level key is also a flag with dashes (``--eval-split`` for ``eval_split``), unless that
  name is a common alias (a reserved meaning);
* an entry's own ``aliases`` add the few that are neither (``--steps`` for ``rl``'s ``num_steps``).

Not here: parsing and printing (the CLI), running stages in order (the pipeline).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Command:
    """One rlxf command."""

    name: str  # "sft", or "group sub" for a grouped command ("reward train", "label user add")
    summary: str  # one line: the CLI's help and the table in docs/README.md
    config: str  # "module:ConfigClass" of its options
    function: str  # "module:function" that runs it: function(config) -> result
    aliases: Mapping[str, str] = field(default_factory=dict)  # its own flags: "--steps" -> "num_steps"
    stage: str | None = None  # its `kind:` in a pipeline file; None: not a stage (see NOT_STAGES)

    def config_class(self) -> type:
        return _resolve(self.config)

    def library_function(self) -> Callable[[Any], Any]:
        return _resolve(self.function)


def _resolve(target: str) -> Any:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


# Flag -> the config keys it may stand for, first present wins. Each alias has one meaning: the keys of a
# tuple are that meaning's spelling in different configs (a policy's `model.name_or_path`, a reward
# model's `model` reference).
COMMON_ALIASES: dict[str, tuple[str, ...]] = {
    "--model": ("model.name_or_path", "model"),
    "--dtype": ("model.dtype", "dtype"),
    "--device": ("model.device", "device"),
    "--lora-r": ("model.lora.r",),
    "--lr": ("train.learning_rate",),
    "--epochs": ("train.num_epochs",),
    "--max-steps": ("train.max_steps",),
    "--batch-size": ("train.global_batch_size",),
    "--micro-batch-size": ("train.micro_batch_size", "micro_batch_size"),
    "--precision": ("train.precision", "precision"),
    "-n": ("sampling.n",),
    "--num-samples": ("sampling.n",),
    "--max-new-tokens": ("sampling.max_new_tokens",),
    "--temperature": ("sampling.temperature",),
    "--top-p": ("sampling.top_p",),
    "--top-k": ("sampling.top_k",),
    "--stop": ("sampling.stop",),
    "--sampling-batch-size": ("sampling.batch_size",),
    "--score-batch-size": ("batch_size",),  # reward eval / score, judge: inputs per scoring pass
}

_ALGOS = "rlxf.algos"
_LABEL = "rlxf.feedback.label.commands"

COMMANDS: tuple[Command, ...] = (
    Command(
        "generate",
        "Sample completions from a model for prompts in a file or on the command line.",
        "rlxf.rollout.generate:GenerateConfig",
        "rlxf.rollout.generate:generate",
    ),
    Command(
        "demo",
        "The main job on the default model: samples -> simulated feedback -> reward model -> PPO -> eval "
        "and report, on this machine (about 9 minutes on 2 CPU cores).",
        "rlxf.demo:DemoConfig",
        "rlxf.demo:demo",
    ),
    Command(
        "pretrain",
        "Pre-train from scratch (GPT-2 / Llama next token, BERT masked LM + NSP, T5 span corruption) or "
        "continue pre-training a model, on a text corpus.",
        f"{_ALGOS}.pretrain:PretrainConfig",
        f"{_ALGOS}.pretrain:pretrain",
        stage="pretrain",
    ),
    Command(
        "sft",
        "Supervised fine-tuning on prompt/completion or messages data (loss on completions only).",
        f"{_ALGOS}.sft:SFTConfig",
        f"{_ALGOS}.sft:sft",
        stage="sft",
    ),
    Command(
        "reward train",
        "Train a reward model on preferences (Bradley-Terry) or ratings (MSE per aspect).",
        f"{_ALGOS}.reward_model:RewardTrainConfig",
        f"{_ALGOS}.reward_model:reward_train",
        stage="reward",
    ),
    Command(
        "reward eval",
        "Accuracy on held-out preferences (ties apart), or MSE / Spearman on held-out ratings.",
        f"{_ALGOS}.reward_eval:RewardEvalConfig",
        f"{_ALGOS}.reward_eval:reward_eval",
    ),
    Command(
        "reward score",
        "Score every completion of a file with a reward model; writes JSONL with a reward field.",
        f"{_ALGOS}.reward_eval:RewardScoreConfig",
        f"{_ALGOS}.reward_eval:reward_score",
    ),
    Command(
        "dpo",
        "Direct preference optimisation: DPO (sigmoid), conservative DPO (label smoothing) or IPO.",
        f"{_ALGOS}.dpo:DPOConfig",
        f"{_ALGOS}.dpo:dpo",
        stage="dpo",
    ),
    Command(
        "kto",
        "Kahneman-Tversky optimisation on unpaired data (prompt, completion, label).",
        f"{_ALGOS}.kto:KTOConfig",
        f"{_ALGOS}.kto:kto",
        stage="kto",
    ),
    Command(
        "ilql",
        "Offline RL on rated completions: ILQL (Q / V heads, advantage-steered decoding) or filtered "
        "behaviour cloning.",
        f"{_ALGOS}.ilql:ILQLConfig",
        f"{_ALGOS}.ilql:ilql",
        stage="ilql",
    ),
    Command(
        "rl",
        "Online RL from feedback: PPO with a critic, GRPO, RLOO or REINFORCE++ against a reward source.",
        f"{_ALGOS}.rl:RLConfig",
        f"{_ALGOS}.rl:rl",
        aliases={"--steps": "num_steps", "--env": "env.name"},
        stage="rl",
    ),
    Command(
        "selfplay",
        "Two-agent RL: a prompter writes inputs, a responder answers, both learn (red-teaming, tug-of-war, "
        "taboo; alternating or simultaneous schedules).",
        f"{_ALGOS}.selfplay:SelfPlayConfig",
        f"{_ALGOS}.selfplay:selfplay",
        stage="selfplay",
    ),
    Command(
        "sample",
        "Sample n responses per prompt and group them (pairs by default) into candidates records for feedback.",
        "rlxf.rollout.candidates:SampleConfig",
        "rlxf.rollout.candidates:sample_candidates",
        stage="sample",
    ),
    Command(
        "run",
        "Run a pipeline FILE.yaml (sample -> feedback -> reward model -> RL or DPO -> eval); re-running "
        "continues where it stopped. Exit status 3: a labelling stage waits for people.",
        "rlxf.pipeline:PipelineConfig",
        "rlxf.pipeline:run_pipeline",
    ),
    Command(
        "eval",
        "Compare a policy with its baseline on held-out prompts (or an environment's test episodes): "
        "reward, success, KL, win rate, fluency, diversity; writes summary.json and report.html.",
        "rlxf.eval.evaluate:EvalConfig",
        "rlxf.eval.evaluate:evaluate",
        aliases={"--env": "env.name"},
        stage="eval",
    ),
    Command(
        "judge",
        "AI feedback: a judge model compares response pairs (both orders) or rates responses from a rubric.",
        "rlxf.feedback.judge:JudgeConfig",
        "rlxf.feedback.judge:judge",
        stage="judge",
    ),
    Command(
        "simulate",
        "Simulated annotators: label pairs with an oracle reward plus label noise and position bias.",
        "rlxf.feedback.simulate:SimulateConfig",
        "rlxf.feedback.simulate:simulate",
        stage="simulate",
    ),
    Command(
        "label serve",
        "Serve the labelling web app (migrates the database first).",
        f"{_LABEL}:LabelServeConfig",
        f"{_LABEL}:label_serve",
    ),
    Command(
        "label user add",
        "Create a labeller (or, with --admin, an admin) account.",
        f"{_LABEL}:LabelUserAddConfig",
        f"{_LABEL}:label_user_add",
    ),
    Command(
        "label user password",
        "Give an account a new password (from a file, standard input or a prompt); its sessions end.",
        f"{_LABEL}:LabelUserPasswordConfig",
        f"{_LABEL}:label_user_password",
    ),
    Command(
        "label user disable",
        "Disable an account: it cannot log in and its sessions end now (its answers stay).",
        f"{_LABEL}:LabelUserDisableConfig",
        f"{_LABEL}:label_user_disable",
    ),
    Command(
        "label user enable",
        "Enable a disabled account again.",
        f"{_LABEL}:LabelUserDisableConfig",
        f"{_LABEL}:label_user_enable",
    ),
    Command(
        "label user logout",
        "End every session of an account (each of its browsers must log in again).",
        f"{_LABEL}:LabelUserDisableConfig",
        f"{_LABEL}:label_user_logout",
    ),
    Command(
        "label member add",
        "Let an account label a project.",
        f"{_LABEL}:LabelMemberConfig",
        f"{_LABEL}:label_member_add",
    ),
    Command(
        "label member remove",
        "Stop an account from labelling a project (its answers stay).",
        f"{_LABEL}:LabelMemberConfig",
        f"{_LABEL}:label_member_remove",
    ),
    Command(
        "label project create",
        "Create a labelling project from a candidates JSONL file ({prompt, responses: [...]} per line).",
        f"{_LABEL}:LabelProjectCreateConfig",
        f"{_LABEL}:label_project_create",
        aliases={"--aspect": "aspects", "--member": "members"},
    ),
    Command(
        "label push",
        "Create a labelling project from a model's responses to prompts (n per prompt).",
        f"{_LABEL}:LabelPushConfig",
        f"{_LABEL}:label_push",
        aliases={"--aspect": "aspects", "--member": "members"},
    ),
    Command(
        "label export",
        "Export a project's answers: preferences (majority / Bradley-Terry), ratings (mean) or raw.",
        f"{_LABEL}:LabelExportConfig",
        f"{_LABEL}:label_export",
    ),
    Command(
        "label collect",
        "Label a candidates file with people: create its project (first run), then export the answers "
        "into --out once enough are in. Exit status 3 while labels are missing.",
        "rlxf.feedback.label.stage:LabelStageConfig",
        "rlxf.feedback.label.stage:label_stage",
        aliases={"--aspect": "aspects", "--member": "members"},
        stage="label",
    ),
)

# The commands that are not pipeline stages, and why. A stage writes into a folder OUT/NAME that it may
# start over (`overwrite`) and that later stages read; these do not fit that mould.
NOT_STAGES: dict[str, str] = {
    "generate": "writes one JSONL file or prints; `sample` is its stage form (a folder of candidates)",
    "demo": "is itself a pipeline (`rlxf demo --print-pipeline` shows it)",
    "run": "is the pipeline",
    "reward eval": "reports on a model without a folder of its own to start over (no `overwrite`)",
    "reward score": "writes one JSONL file, not a stage folder",
    "label serve": "serves the web app until stopped",
    "label user add": "administers accounts, once, not per run",
    "label user password": "administers accounts, once, not per run",
    "label user disable": "administers accounts, once, not per run",
    "label user enable": "administers accounts, once, not per run",
    "label user logout": "administers accounts, once, not per run",
    "label member add": "administers memberships, once, not per run",
    "label member remove": "administers memberships, once, not per run",
    "label project create": "the `label` stage (`rlxf label collect`) creates its project itself",
    "label push": "the `label` stage (`rlxf label collect`) creates its project itself",
    "label export": "the `label` stage (`rlxf label collect`) exports its answers itself",
}

# Help of the command groups (`rlxf reward`, `rlxf label`, `rlxf label user` ...).
GROUPS: dict[str, str] = {
    "label": "The labelling web app: people judge model outputs; accounts, projects, export.",
    "label user": "Accounts of the labelling app.",
    "label project": "Labelling projects.",
    "label member": "Who may label which project.",
    "reward": "Reward models: train one from preferences or ratings, evaluate it, score data with it.",
}

STAGE_KINDS: tuple[str, ...] = tuple(c.stage for c in COMMANDS if c.stage is not None)


def command(name: str) -> Command:
    """The entry of ``name`` ("sft", "reward train")."""
    for entry in COMMANDS:
        if entry.name == name:
            return entry
    raise KeyError(f"no rlxf command {name!r}")


def command_for_stage(kind: str) -> Command:
    """The command a pipeline stage of ``kind`` runs."""
    for entry in COMMANDS:
        if entry.stage == kind:
            return entry
    raise KeyError(f"no stage kind {kind!r} (kinds: {', '.join(STAGE_KINDS)})")


def flag_aliases(entry: Command, keys: list[str]) -> dict[str, str]:
    """The alias flags of ``entry`` -> the dotted config key each sets, given its config's ``keys``."""
    present = set(keys)
    aliases: dict[str, str] = {}
    for flag, candidates in COMMON_ALIASES.items():
        key = next((k for k in candidates if k in present), None)
        if key is not None:
            aliases[flag] = key
    for key in keys:
        dashed = "--" + key.replace("_", "-")
        if "." not in key and "_" in key and dashed not in COMMON_ALIASES:
            aliases[dashed] = key
    for flag, key in entry.aliases.items():
        if key not in present:
            raise KeyError(f"rlxf {entry.name}: alias {flag} names {key}, which its config has not")
        aliases[flag] = key
    return aliases


def config_keys(config_cls: type) -> list[str]:
    """Every dotted key of a config class (nested sections flattened), as ``rlxf.config.describe`` lists."""
    from rlxf.config import describe

    return [key for key, *_ in describe(config_cls)]


def exports() -> dict[str, str]:
    """Public name -> ``"module:attr"`` for every command's function and config (``from rlxf import sft``)."""
    names: dict[str, str] = {}
    for entry in COMMANDS:
        for target in (entry.function, entry.config):
            names[target.split(":")[1]] = target
    return names


def has_option(config_cls: type, name: str) -> bool:
    """Whether a config class has the top-level option ``name`` (e.g. ``resume``: a resumable run)."""
    return name in {f.name for f in dataclasses.fields(config_cls)}


__all__ = [
    "COMMANDS",
    "COMMON_ALIASES",
    "Command",
    "GROUPS",
    "NOT_STAGES",
    "STAGE_KINDS",
    "command",
    "config_keys",
    "exports",
    "flag_aliases",
    "has_option",
    "command_for_stage",
]
