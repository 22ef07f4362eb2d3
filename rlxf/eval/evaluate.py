"""``rlxf eval``: what changed between a policy ``A`` and its baseline ``B`` on held-out prompts.

Both models sample ``n`` completions for every prompt with the same settings and seed; then:

* **reward** (the gold scorer, ``--reward``): mean and standard deviation over completions for each model,
  the difference, and the *share of prompts improved* (A's mean reward over the prompt's samples above
  B's; a tie counts one half). Standard errors are over prompts (the samples of one prompt are not
  independent). With ``--reward-threshold T`` each model's ``share_above``: the share of its completions
  whose reward is above ``T`` (for VADER, 0.05 is where "positive" starts).
* **KL(A || B)** from A's samples, the unbiased k1 estimator summed over each completion's tokens:
  ``KL = E_{y~A}[ sum_t log A(y_t | x, y_<t) - log B(y_t | x, y_<t) ]`` nats per completion, with the
  distributions as sampled (logits / temperature). A's log-probs are the ones the engine recorded while
  sampling (exact with plain sampling: no top-k / top-p); B's come from one forward pass. Needs the same
  tokenizer on both sides (otherwise reported as unavailable).
* **win rate** of A over B: sample ``j`` of prompt ``i`` from A against sample ``j`` from B, decided by a
  reward spec (``--win-reward``; the gold reward by default: the higher reward wins) or by a pairwise LM
  judge (``--win-judge MODEL``: the pair shown in both orders, as ``rlxf judge`` does, so a constant
  position bias cancels): 1 win, 1/2 tie, 0 loss; mean over prompts of the per-prompt mean, with its
  standard error.
* **fluency**: perplexity under B (at temperature 1) of A's completions, next to that of B's own: a policy
  that drifted into text its starting model finds unlikely shows here first.
* **held-out loss** (``--held-out-data CORPUS``, optional): each model's loss on a text corpus, nats per
  token (:func:`held_out_loss`), and in the report each model's mean reward against it: the two axes of
  Korbak et al. 2023 ("Pretraining Language Models with Human Preferences", figure 2), misalignment
  against capability, for comparing two pre-trained models (``rlxf pretrain`` results).
* **diversity**: distinct-1 / distinct-2 (Li et al. 2016) over all completions, and the share that repeat
  one word 3-gram 3+ times (:mod:`rlxf.rollout.text_stats`); **length**: mean completion tokens, share truncated.
* **naturalness** (``summary["naturalness"]``, with a baseline; :func:`naturalness`): three ways a policy
  can please its reward while its text stops reading like its starting model's, each as policy / baseline
  with a bound (options ``max_lexicon_ratio``, ``perplexity_ratio_bounds``, ``min_distinct2_ratio``):

  - ``lexicon_share`` (``policy``, ``baseline``, ``ratio``, ``max_ratio``, ``min_abs_valence``,
    ``flagged``): the share of words that are in VADER's lexicon with ``|valence| >= 1``
    (:func:`rlxf.feedback.sentiment.sentiment_lexicon`, :func:`rlxf.rollout.text_stats.lexicon_share`);
    a ratio above ``max_ratio`` suggests stuffing sentiment words;
  - ``perplexity`` (``policy``, ``baseline``, ``ratio``, ``bounds``, ``flagged``): the two perplexities
    under the baseline above, as a ratio; below ``bounds[0]`` the text is blander, more generic than the
    start model's, above ``bounds[1]`` it drifts into text the start model finds unlikely (gibberish);
    absent when the tokenizers differ;
  - ``distinct_2`` (``policy``, ``baseline``, ``ratio``, ``min_ratio``, ``flagged``): below ``min_ratio``
    the completions are less varied than the start model's;
  - ``flags``: one plain sentence per bound broken (figure, bound, what it suggests); ``unavailable``:
    ``{figure: reason}`` for a figure that could not be measured (``lexicon_share`` without the
    ``vaderSentiment`` package, ``perplexity`` across tokenizers). A ratio over a baseline figure of 0 is
    ``null``. ``naturalness`` is ``null`` without a baseline.
* **proxy vs gold** (``summary["proxy_vs_gold"]``): when the policy comes from an ``rlxf rl`` run whose
  ``metrics.jsonl`` has held-out evaluations with ``eval/reward/mean`` (the proxy: the training reward),
  ``eval/gold_reward/mean`` and ``eval/kl``, one ``{step, kl, proxy, gold}`` per evaluation, in step
  order (:func:`rlxf.eval.report.proxy_vs_gold_points`), and the report plots both against sqrt(KL)
  (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization"); ``null`` otherwise.

Writes into ``--out``: ``config.yaml``, ``samples.jsonl`` (A's and B's completion side by side with their
rewards and A's KL), ``summary.json`` and ``report.html`` (:mod:`rlxf.eval.report`: plots of the training
run's reward and KL per step when the policy comes from an rlxf run folder, reward against KL, length
histograms, sample table). The folder is claimed and written as every non-training command's is
(:mod:`rlxf.train.outdir`); progress and the closing figures are logged (``logging``, under ``rlxf``).
With an environment (``--env NAME``, or the environment of the run ``--model`` comes from) the held-out
set is ``env.eval_episodes`` episodes of its test split, played by each model with the same seeds
(:func:`rlxf.rollout.episodes.run_episodes`): the reward is the episode's, the report adds each model's
success rate, and KL, perplexity and lengths count the models' own tokens (observations left out); the
training curves then show the success rate per step as well.
Leaves out: several baselines at once, an HTTP pairwise judge for the win rate, and bootstrap intervals.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from rlxf.config import option
from rlxf.data import ChatTemplateMode, read_prompts, render_prompt
from rlxf.data.corpus import iter_documents, validate_corpus
from rlxf.eval.report import proxy_vs_gold_points, render_report
from rlxf.feedback.lm_judge import DEFAULT_PAIRWISE_TEMPLATE, LocalPairJudge, judge_pairs
from rlxf.feedback.rewards import RewardOptions, parse_reward_spec
from rlxf.feedback.sentiment import sentiment_lexicon
from rlxf.models import ModelConfig, load_model
from rlxf.models.precision import Precision, autocast, resolve_precision
from rlxf.models.registry import resolve_model
from rlxf.rollout import HFEngine, RolloutBatch, SamplingConfig
from rlxf.rollout.episodes import EnvConfig, run_episodes
from rlxf.rollout.ilql_decoding import ILQLDecoding, decoding_summary, ilql_decoding
from rlxf.rollout.logprobs import batch_logprobs
from rlxf.rollout.text_stats import distinct_n, lexicon_share, repeats_ngram
from rlxf.train.metrics import read_metrics
from rlxf.train.outdir import claim_output_folder, write_output_folder
from rlxf.train.run import render_config

logger = logging.getLogger(__name__)

OUTPUT_FILES = ("config.yaml", "samples.jsonl", "report.html", "summary.json")
HELD_OUT_BLOCK = 128  # tokens per block of the held-out loss: rlxf pretrain's default block_size
# naturalness.lexicon_share counts the words of VADER's lexicon with |mean valence| >= this (scale -4..4)
LEXICON_MIN_VALENCE = 1.0


def _default_sampling() -> SamplingConfig:
    return SamplingConfig(max_new_tokens=48, n=4, batch_size=32)


@dataclass
class EvalConfig:
    """Options of ``rlxf eval``."""

    model: ModelConfig = field(
        default_factory=ModelConfig
    )  # the policy A: a model reference or rlxf run folder
    baseline: str | None = option(
        None,
        help="model reference B to compare with; unset: the starting model of the run --model comes from "
        "(its config.yaml), else the model itself is only described",
    )
    prompts: str = option("", help="held-out prompts file (JSONL, CSV, Parquet or a datasets folder)")
    env: EnvConfig = field(default_factory=EnvConfig)  # or an environment's test episodes (docs/envs.md)
    prompts_split: str | None = option(None, help="use only prompt records whose `split` equals this")
    max_prompts: int | None = option(None, help="evaluate the first N prompts only")
    chat_template: ChatTemplateMode = option(
        "auto", help="auto: messages use the chat template, plain prompts are continued raw; always; never"
    )
    reward: str = option(
        "sentiment", help="gold reward spec: sentiment, model:PATH, fn:FILE:FUNC, judge:MODEL, URL"
    )
    win_reward: str | None = option(
        None, help="reward spec that decides the win rate; unset: the gold reward"
    )
    win_judge: str | None = option(
        None,
        help="a judge model (model reference) that compares each pair of completions in both orders (rlxf "
        "judge's rubric) and decides the win rate instead of win_reward",
    )
    win_judge_template: str | None = option(
        None, help="rubric file for win_judge, with {prompt} {response_a} {response_b}; unset: rlxf judge's"
    )
    reward_options: RewardOptions = field(default_factory=RewardOptions)
    sampling: SamplingConfig = field(default_factory=_default_sampling)
    precision: Precision = option(
        "auto", help="auto (bf16-mixed where the CPU/GPU has native bf16), fp32, bf16-mixed"
    )
    micro_batch_size: int = option(16, help="rows per forward pass when computing log-probs")
    run: str | None = option(
        None,
        help="training run folder whose metrics.jsonl the report plots; unset: the run of --model, if any",
    )
    held_out_data: str | None = option(
        None,
        help="a text corpus (as rlxf pretrain's --data): each model's held-out loss on it, in nats per token, "
        "against its mean reward (misalignment vs capability)",
    )
    held_out_tokens: int = option(32768, help="held_out_data: score the first N tokens (blocks of 128)")
    num_examples: int = option(12, help="prompts shown side by side in the report")
    seed: int = option(0, help="sampling seed (the same for A and B)")
    ilql_beta: float | None = option(
        None,
        help="a policy from rlxf ilql: decode with pi_LM * exp(beta * advantage) (0: its LM alone); unset: "
        "the beta its ilql.json names. The baseline is always read as a plain LM",
    )
    ilql_top_k: int | None = option(
        None, help="a policy from rlxf ilql: the LM's top-k tokens the advantage re-ranks; unset: ilql.json's"
    )
    reward_threshold: float | None = option(
        None,
        help="also give each model's share of completions whose reward is above this (e.g. 0.05, where VADER "
        "reads positive); unset: not reported",
    )
    max_lexicon_ratio: float = option(
        1.8,
        help="naturalness: flag a policy whose share of sentiment-lexicon words is above this many times the "
        "baseline's (stuffing praise words)",
    )
    perplexity_ratio_bounds: list[float] = option(
        default_factory=lambda: [0.67, 1.5],
        help="naturalness: [low, high] of the policy's perplexity under the baseline / the baseline's own; "
        "below low: blander, more generic text; above high: text the start model finds unlikely (gibberish)",
    )
    min_distinct2_ratio: float = option(
        0.95, help="naturalness: flag a policy whose distinct-2 is below this many times the baseline's"
    )
    out: str = option("", help="output folder: summary.json, report.html, samples.jsonl, config.yaml")
    overwrite: bool = option(False, help="replace an evaluation already in --out")

    def __post_init__(self) -> None:
        if self.prompts and self.env.name:
            raise ValueError("give held-out prompts (--prompts) or an environment (--env), not both")
        if not self.out:
            raise ValueError("give an output folder: --out DIR")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(f"max_prompts must be >= 1, got {self.max_prompts}")
        if self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.held_out_tokens < HELD_OUT_BLOCK:
            raise ValueError(f"held_out_tokens must be >= {HELD_OUT_BLOCK}, got {self.held_out_tokens}")
        if self.num_examples < 0:
            raise ValueError(f"num_examples must be >= 0, got {self.num_examples}")
        if self.precision == "bf16":
            raise ValueError("precision bf16 (pure bf16 weights) is for training; use bf16-mixed or fp32")
        if self.win_judge_template is not None and not Path(self.win_judge_template).is_file():
            raise ValueError(f"win_judge_template: no such file {self.win_judge_template}")
        if self.sampling.greedy and self.sampling.n > 1:
            raise ValueError("greedy decoding (temperature 0) gives the same completion n times: set n=1")
        if not self.max_lexicon_ratio >= 1.0:
            raise ValueError(
                f"max_lexicon_ratio must be >= 1 (1: the baseline's share), got {self.max_lexicon_ratio}"
            )
        bounds = self.perplexity_ratio_bounds
        if len(bounds) != 2 or not 0.0 < bounds[0] <= 1.0 <= bounds[1]:
            raise ValueError(
                "perplexity_ratio_bounds must be two numbers [low, high] with 0 < low <= 1 <= high, "
                f"e.g. [0.67, 1.5]; got {bounds}"
            )
        if not 0.0 <= self.min_distinct2_ratio <= 1.0:
            raise ValueError(f"min_distinct2_ratio must be in [0, 1], got {self.min_distinct2_ratio}")


def run_folder_of(ref: str) -> Path | None:
    """The rlxf run folder a model reference points into (``RUN`` or ``RUN/model``), if it is one."""
    path = Path(ref).expanduser()
    for candidate in (path, path.parent):
        if (candidate / "config.yaml").is_file() and (candidate / "model" / "config.json").is_file():
            return candidate
    return None


def _model_ref(ref: str) -> str:
    """``RUN`` -> ``RUN/model`` for an rlxf run folder; anything else unchanged."""
    path = Path(ref).expanduser()
    if (path / "model" / "config.json").is_file() and not (path / "config.json").is_file():
        return str(path / "model")
    return ref


def starting_model(run: Path) -> str | None:
    """The model reference a run started from (``model.name_or_path`` of its ``config.yaml``)."""
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    model = config.get("model")
    ref = model.get("name_or_path") if isinstance(model, dict) else None
    return str(ref) if ref else None


def training_reward(run: Path) -> str | None:
    """The reward spec a training run optimised (``reward`` of its ``config.yaml``), as text."""
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    reward = config.get("reward")
    return None if reward is None else str(reward)


def training_env(run: Path) -> EnvConfig:
    """The environment a training run's ``config.yaml`` names (unset ``name`` when it has none); ``rlxf
    eval`` takes its name, arguments and ``max_turns``, and keeps its own episode budget and count."""
    path = run / "config.yaml"
    values = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}
    env = values.get("env") or {}
    if not env.get("name"):
        return EnvConfig()
    return EnvConfig(
        name=env["name"],
        args=env.get("args") or {},
        max_turns=env.get("max_turns", 0),
        max_episode_tokens=env.get("max_episode_tokens", 256),
        eval_episodes=env.get("eval_episodes", 64),
    )


class _EnvReward:
    """An environment's episode reward (the sum of its turns'), in the place of a reward spec."""

    def __init__(self, env_name: str) -> None:
        self.name = f"env:{env_name}"

    @staticmethod
    def of(batch: RolloutBatch) -> list[float]:
        return batch.turn_rewards.sum(-1).tolist()  # [B]


def _success(batch: RolloutBatch, n: int) -> dict[str, float]:
    """Success rate of a batch of episodes: mean and standard error over the tasks (n episodes each)."""
    mean, se = mean_se(per_prompt([float(e["success"]) for e in batch.episodes], n))
    return {"mean": mean, "se": se}


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(n); 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def per_prompt(values: list[float], n: int) -> list[float]:
    """Means of consecutive groups of ``n`` (rows are grouped prompt by prompt)."""
    return [sum(values[i : i + n]) / n for i in range(0, len(values), n)]


def text_stats(batch: RolloutBatch) -> dict[str, float]:
    """Length, truncation, diversity and repetition of a batch's completions."""
    texts = list(batch.completions)
    return {
        "length_mean": batch.completion_mask.float().sum(-1).mean().item(),
        "truncated": sum(r == "length" for r in batch.finish_reasons) / len(batch),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "repetition": sum(repeats_ngram(t, 3, 3) for t in texts) / len(texts),
    }


def perplexity(logprobs: torch.Tensor, mask: torch.Tensor) -> float:
    """exp of the mean negative log-likelihood per completion token (normaliser: all tokens of the set)."""
    return math.exp(-(logprobs * mask).sum().item() / max(mask.sum().item(), 1.0))


@dataclass
class EvalResult:
    summary: dict[str, Any]  # what summary.json holds
    samples: list[dict[str, Any]]  # what samples.jsonl holds
    out: Path


class _Models:
    """A and B, loaded once, sampling and scoring under one precision; A decodes with its ILQL heads when
    ``steering`` is given."""

    def __init__(
        self, cfg: EvalConfig, policy_ref: str, baseline_ref: str | None, steering: ILQLDecoding | None
    ) -> None:
        model_cfg = dataclasses.replace(cfg.model, name_or_path=policy_ref, dtype="float32")
        self.policy, self.tokenizer = load_model(model_cfg)
        if steering is not None:
            steering.attach(self.policy)
        self.device = next(self.policy.parameters()).device
        self.precision = resolve_precision(cfg.precision, self.device)
        self.baseline = self.baseline_tokenizer = None
        if baseline_ref is not None:
            base_cfg = dataclasses.replace(model_cfg, name_or_path=baseline_ref)
            self.baseline, self.baseline_tokenizer = load_model(base_cfg)
        self.cfg = cfg

    def autocast(self) -> Any:
        return autocast(self.precision, self.device)

    @property
    def same_tokenizer(self) -> bool:
        return self.baseline_tokenizer is not None and (
            self.baseline_tokenizer.get_vocab() == self.tokenizer.get_vocab()
        )

    def sample(self, model: torch.nn.Module, tokenizer: Any, prompts: list[str]) -> RolloutBatch:
        """``n`` completions of each prompt; with an environment, ``n`` episodes of each test seed."""
        env = self.cfg.env
        with torch.no_grad(), self.autocast():
            if not env.name:
                return HFEngine(model, tokenizer).generate(prompts, self.cfg.sampling, seed=self.cfg.seed)
            seeds = [i for i in range(env.eval_episodes) for _ in range(self.cfg.sampling.n)]
            return run_episodes(
                HFEngine(model, tokenizer),
                lambda: env.make("test"),
                seeds,
                self.cfg.sampling,
                max_episode_tokens=env.max_episode_tokens,
                seed=self.cfg.seed,
            )

    def logprobs(self, model: torch.nn.Module, batch: RolloutBatch, temperature: float) -> torch.Tensor:
        return batch_logprobs(model, batch, temperature, self.cfg.micro_batch_size, self.autocast())


def evaluate(cfg: EvalConfig) -> EvalResult:
    """Run ``rlxf eval`` (module docstring); returns what it wrote."""
    started = time.monotonic()
    logger.info("%s", render_config(cfg, "rlxf eval"))
    # Everything that can be wrong with the input is checked before a model loads or a file is written.
    run = Path(cfg.run) if cfg.run else run_folder_of(cfg.model.name_or_path)
    if not cfg.prompts and not cfg.env.name:
        trained = training_env(run) if run is not None else EnvConfig()
        # the run's environment (name, arguments, turns); this command's budget and number of episodes
        env = dataclasses.replace(cfg.env, name=trained.name, args=trained.args, max_turns=trained.max_turns)
        cfg = dataclasses.replace(cfg, env=env)
        if not cfg.env.name:
            raise ValueError("give the held-out prompts (--prompts FILE) or an environment (--env NAME)")
        logger.info("the environment of the run %s: %s", run, cfg.env.name)
    out = claim_output_folder(cfg.out, OUTPUT_FILES, overwrite=cfg.overwrite, command="rlxf eval")
    if cfg.env.name:
        cfg.env.make("test").close()  # a bad environment stops here, before any model loads
        records = None
        gold = judge = _EnvReward(cfg.env.name)
    else:
        records = read_prompts(cfg.prompts, cfg.prompts_split, cfg.max_prompts)  # checked before models load
        gold = parse_reward_spec(cfg.reward, cfg.reward_options)
        judge = parse_reward_spec(cfg.win_reward, cfg.reward_options) if cfg.win_reward else gold
    if cfg.run and not (run / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"--run {run}: no metrics.jsonl there")
    policy_ref = _model_ref(cfg.model.name_or_path)
    baseline_ref = cfg.baseline or (starting_model(run) if run is not None else None)
    if baseline_ref is not None:
        baseline_ref = _model_ref(baseline_ref)
        resolve_model(baseline_ref)  # a missing baseline fails here, before the policy loads
    if cfg.win_judge is not None:
        resolve_model(cfg.win_judge)
    policy_dir = resolve_model(policy_ref)
    steering = ilql_decoding(policy_dir, cfg.ilql_beta, cfg.ilql_top_k)
    if cfg.held_out_data is not None:
        validate_corpus(cfg.held_out_data)  # a bad record stops here, with its file, line and field

    models = _Models(cfg, policy_ref, baseline_ref, steering)
    if records is not None:
        prompts = [render_prompt(r, models.tokenizer, cfg.chat_template) for r in records.records]
        raw_prompts = [r.get("messages", r.get("prompt")) for r in records.records]
    else:  # the episodes' first observations, as the policy's tokenizer renders them
        prompts = [f"{cfg.env.name} test episode {i}" for i in range(cfg.env.eval_episodes)]
        raw_prompts = list(prompts)
    n = cfg.sampling.n
    temperature = cfg.sampling.temperature if not cfg.sampling.greedy else 1.0
    plain = cfg.sampling.top_k == 0 and cfg.sampling.top_p == 1.0 and not cfg.sampling.greedy

    logger.info("sampling %d prompts x %d from the policy %s", len(prompts), n, policy_ref)
    batch_a = models.sample(models.policy, models.tokenizer, prompts)
    rewards_a = gold.of(batch_a) if cfg.env.name else gold(list(batch_a.prompts), list(batch_a.completions))
    summary: dict[str, Any] = {
        "policy": policy_ref,
        "baseline": baseline_ref,
        "prompts": cfg.prompts,
        "num_prompts": len(prompts),
        "samples_per_prompt": n,
        "reward_spec": gold.name,
        "precision": models.precision,
        "ilql": decoding_summary(policy_dir, steering),  # how an ILQL policy decoded (None: a plain LM)
    }
    if cfg.env.name:
        summary["env"] = dataclasses.asdict(cfg.env)
    policy_stats = text_stats(batch_a)
    reward_a_mean, reward_a_se = mean_se(per_prompt(rewards_a, n))
    reward: dict[str, Any] = {
        "policy": {
            "mean": reward_a_mean,
            "se": reward_a_se,
            "std": _std(rewards_a),
            **_above(cfg, rewards_a),
        },
    }
    if cfg.reward_threshold is not None:
        reward["threshold"] = cfg.reward_threshold
    samples = [
        {
            "prompt": raw_prompts[i // n],
            "sample": i % n,
            "policy": batch_a.completions[i],
            "policy_reward": rewards_a[i],
        }
        for i in range(len(batch_a))
    ]
    if batch_a.episodes is not None:
        for i, row in enumerate(samples):
            row["prompt"] = batch_a.prompts[i]
            row["policy_success"] = batch_a.episodes[i]["success"]
            row["policy_transcript"] = batch_a.episodes[i]["transcript"]
        summary["success_rate"] = {"policy": _success(batch_a, n)}
    lengths: dict[str, list[float]] = {"policy": batch_a.policy_mask.sum(-1).tolist()}

    if models.baseline is not None:
        logger.info("sampling %d prompts x %d from the baseline %s", len(prompts), n, baseline_ref)
        batch_b = models.sample(models.baseline, models.baseline_tokenizer, prompts)
        rewards_b = (
            gold.of(batch_b) if cfg.env.name else gold(list(batch_b.prompts), list(batch_b.completions))
        )
        if batch_b.episodes is not None:
            summary["success_rate"]["baseline"] = _success(batch_b, n)
            for i, row in enumerate(samples):
                row["baseline_success"] = batch_b.episodes[i]["success"]
                row["baseline_transcript"] = batch_b.episodes[i]["transcript"]
        base_prompt_means = per_prompt(rewards_b, n)
        reward_b_mean, reward_b_se = mean_se(base_prompt_means)
        reward["baseline"] = {
            "mean": reward_b_mean,
            "se": reward_b_se,
            "std": _std(rewards_b),
            **_above(cfg, rewards_b),
        }
        deltas = [a - b for a, b in zip(per_prompt(rewards_a, n), base_prompt_means)]
        reward["delta"], reward["delta_se"] = mean_se(deltas)
        reward["share_improved"] = sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in deltas) / len(deltas)

        if cfg.win_judge is not None:
            logger.info("the judge %s compares each pair in both orders", cfg.win_judge)
            wins, judge_detail = pairwise_wins(
                cfg, list(batch_a.prompts), list(batch_a.completions), list(batch_b.completions)
            )
        else:
            judge_a = rewards_a if judge is gold else judge(list(batch_a.prompts), list(batch_a.completions))
            judge_b = rewards_b if judge is gold else judge(list(batch_b.prompts), list(batch_b.completions))
            wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(judge_a, judge_b)]
            judge_detail = {"judge": judge.name}
        win_rate, win_se = mean_se(per_prompt(wins, n))
        summary["win_rate"] = {
            "value": win_rate,
            "se": win_se,
            "ties": sum(w == 0.5 for w in wins) / len(wins),
            **judge_detail,
        }
        lengths["baseline"] = batch_b.policy_mask.sum(-1).tolist()
        for i, row in enumerate(samples):
            row["baseline"] = batch_b.completions[i]
            row["baseline_reward"] = rewards_b[i]

        if models.same_tokenizer:
            logger.info("log-probs of the policy's samples under the baseline (KL, perplexity)")
            mask_a = batch_a.policy_mask.float()
            logp_a = (
                batch_a.logprobs.float() if plain else models.logprobs(models.policy, batch_a, temperature)
            )
            logp_b_on_a = models.logprobs(models.baseline, batch_a, temperature)
            kl_rows = ((logp_a - logp_b_on_a) * mask_a).sum(-1).tolist()  # [B] k1 per completion
            kl_mean, kl_se = mean_se(per_prompt(kl_rows, n))
            summary["kl"] = {
                "mean": kl_mean,
                "se": kl_se,
                "estimator": "k1 summed over tokens, nats per completion, from the policy's samples",
            }
            for i, row in enumerate(samples):
                row["kl"] = kl_rows[i]
            # Perplexity is the model's own distribution (temperature 1), whatever the sampling temperature.
            logp_b_on_a_t1 = (
                logp_b_on_a if temperature == 1.0 else models.logprobs(models.baseline, batch_a, 1.0)
            )
            mask_b = batch_b.policy_mask.float()
            logp_b_on_b = (
                batch_b.logprobs.float()
                if plain and temperature == 1.0
                else models.logprobs(models.baseline, batch_b, 1.0)
            )
            summary["perplexity_under_baseline"] = {
                "policy": perplexity(logp_b_on_a_t1, mask_a),
                "baseline": perplexity(logp_b_on_b, mask_b),
            }
        else:
            summary["kl"] = None
            summary["note"] = "policy and baseline tokenizers differ: no KL or perplexity under the baseline"
        summary["text"] = {"policy": policy_stats, "baseline": text_stats(batch_b)}
        summary["naturalness"] = _naturalness_of(
            cfg, summary, list(batch_a.completions), list(batch_b.completions)
        )
    else:
        summary["text"] = {"policy": policy_stats}
        summary["naturalness"] = None
    summary["reward"] = reward
    if cfg.held_out_data is not None:
        summary["held_out"] = {"data": cfg.held_out_data, "block_size": HELD_OUT_BLOCK}
        pairs = [("policy", models.policy, models.tokenizer)]
        if models.baseline is not None:
            pairs.append(("baseline", models.baseline, models.baseline_tokenizer))
        for name, model, tokenizer in pairs:
            logger.info("held-out loss of the %s on %s", name, cfg.held_out_data)
            with models.autocast():
                summary["held_out"][name] = held_out_loss(
                    model, tokenizer, cfg.held_out_data, cfg.held_out_tokens, cfg.micro_batch_size
                )
    summary["run"] = str(run) if run is not None else None
    summary["train_reward_spec"] = training_reward(run) if run is not None else None
    metrics = (
        read_metrics(run / "metrics.jsonl") if run is not None and (run / "metrics.jsonl").is_file() else []
    )
    summary["proxy_vs_gold"] = proxy_vs_gold_points(metrics) or None
    summary["wall_time_s"] = round(time.monotonic() - started, 3)

    html = render_report(summary, samples, metrics, lengths, num_examples=cfg.num_examples)
    write_output_folder(out, cfg, summary, {"samples.jsonl": samples, "report.html": html})
    logger.info("%s\nreport: %s", describe_summary(summary), out / "report.html")
    return EvalResult(summary=summary, samples=samples, out=out)


def naturalness(
    *,
    distinct_2: tuple[float, float],
    perplexity: tuple[float, float] | None,
    lexicon_share: tuple[float, float] | None,
    max_lexicon_ratio: float = 1.8,
    perplexity_ratio_bounds: Sequence[float] = (0.67, 1.5),
    min_distinct2_ratio: float = 0.95,
    min_abs_valence: float = LEXICON_MIN_VALENCE,
    unavailable: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``summary["naturalness"]`` (module docstring) from figures already measured, each a ``(policy,
    baseline)`` pair; ``None`` for one that could not be measured, with its reason in ``unavailable``.

    Every ratio is policy / baseline (``None`` over a baseline of 0). A figure is flagged when its ratio
    breaks its bound strictly: ``lexicon_share`` above ``max_lexicon_ratio`` (or any share over a baseline
    share of 0), ``perplexity`` outside ``perplexity_ratio_bounds``, ``distinct_2`` below
    ``min_distinct2_ratio``; each flag is a sentence naming the figure, the bound and what it suggests.
    """
    reasons = dict(unavailable or {})
    block: dict[str, Any] = {}
    flags: list[str] = []
    if lexicon_share is not None:
        policy, base = lexicon_share
        ratio = _ratio(policy, base)
        flagged = ratio > max_lexicon_ratio if ratio is not None else policy > 0.0
        block["lexicon_share"] = {
            "policy": policy,
            "baseline": base,
            "ratio": ratio,
            "max_ratio": max_lexicon_ratio,
            "min_abs_valence": min_abs_valence,
            "flagged": flagged,
        }
        if flagged:
            times = (
                f"is {ratio:.2f}x the baseline's {base:.1%}"
                if ratio is not None
                else "where the baseline used none (an unbounded ratio)"
            )
            flags.append(
                f"sentiment-lexicon word share {policy:.1%} {times}, above the bound {max_lexicon_ratio:g}x: "
                "the policy may be stuffing sentiment words to game the reward"
            )
    else:
        reasons.setdefault("lexicon_share", "not measured")
    if perplexity is not None:
        policy, base = perplexity
        ratio = _ratio(policy, base)
        low, high = perplexity_ratio_bounds
        flagged = ratio is not None and not low <= ratio <= high
        block["perplexity"] = {
            "policy": policy,
            "baseline": base,
            "ratio": ratio,
            "bounds": [low, high],
            "flagged": flagged,
        }
        if flagged:
            start = (
                f"perplexity under the baseline of the policy's text ({policy:.2f}) is {ratio:.2f}x that of "
                f"the baseline's own ({base:.2f})"
            )
            if ratio < low:
                flags.append(
                    f"{start}, below the bound {low:g}x: the policy's text is blander, more generic than the "
                    "start model's"
                )
            else:
                flags.append(
                    f"{start}, above the bound {high:g}x: the policy drifts into text the start model finds "
                    "unlikely (garbled text, gibberish)"
                )
    else:
        reasons.setdefault("perplexity", "not measured")
    policy, base = distinct_2
    ratio = _ratio(policy, base)
    flagged = ratio is not None and ratio < min_distinct2_ratio
    block["distinct_2"] = {
        "policy": policy,
        "baseline": base,
        "ratio": ratio,
        "min_ratio": min_distinct2_ratio,
        "flagged": flagged,
    }
    if flagged:
        flags.append(
            f"distinct-2 {policy:.3f} is {ratio:.2f}x the baseline's {base:.3f}, below the bound "
            f"{min_distinct2_ratio:g}x: the policy's completions are less varied (repetitive or templated)"
        )
    block["flags"] = flags
    block["unavailable"] = reasons
    return block


def _ratio(policy: float, baseline: float) -> float | None:
    return policy / baseline if baseline != 0 else None


def _naturalness_of(
    cfg: EvalConfig, summary: dict[str, Any], policy_texts: list[str], baseline_texts: list[str]
) -> dict[str, Any]:
    """:func:`naturalness` of this evaluation: the lexicon shares measured here (when ``vaderSentiment``
    is importable), the perplexities and distinct-2 already in ``summary``."""
    unavailable: dict[str, str] = {}
    shares = None
    try:
        lexicon = sentiment_lexicon(LEXICON_MIN_VALENCE)
    except ImportError as exc:
        unavailable["lexicon_share"] = str(exc)
    else:
        shares = (lexicon_share(policy_texts, lexicon), lexicon_share(baseline_texts, lexicon))
    p = summary.get("perplexity_under_baseline")
    if p is None:
        unavailable["perplexity"] = "policy and baseline tokenizers differ: no perplexity under the baseline"
    text = summary["text"]
    return naturalness(
        distinct_2=(text["policy"]["distinct_2"], text["baseline"]["distinct_2"]),
        perplexity=(p["policy"], p["baseline"]) if p is not None else None,
        lexicon_share=shares,
        max_lexicon_ratio=cfg.max_lexicon_ratio,
        perplexity_ratio_bounds=cfg.perplexity_ratio_bounds,
        min_distinct2_ratio=cfg.min_distinct2_ratio,
        unavailable=unavailable,
    )


def held_out_loss(
    model: torch.nn.Module, tokenizer: Any, corpus: str, max_tokens: int, micro_batch_size: int
) -> dict[str, float]:
    """A causal model's loss on the start of a held-out corpus: nats per predicted token, and tokens.

    The corpus is read as ``rlxf pretrain`` reads it: documents in order, each followed by EOS, packed into
    blocks of :data:`HELD_OUT_BLOCK` tokens, of which the first ``max_tokens // HELD_OUT_BLOCK`` are scored.
    Each block predicts its tokens 2..128 from the ones before (127 predictions; no context crosses a
    block), so a pre-trained run's ``eval/loss`` and this figure agree for the same blocks. Each model reads
    the corpus with its own tokenizer: across tokenizers the loss per token is not the same unit (the
    report says so).
    """
    num_blocks = max_tokens // HELD_OUT_BLOCK
    ids: list[int] = []
    for document in iter_documents(corpus):
        ids += tokenizer(document.text, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        if len(ids) >= num_blocks * HELD_OUT_BLOCK:
            break
    num_blocks = min(num_blocks, len(ids) // HELD_OUT_BLOCK)
    if num_blocks == 0:
        raise ValueError(f"held_out_data {corpus}: fewer than {HELD_OUT_BLOCK} tokens")
    blocks = torch.tensor(ids[: num_blocks * HELD_OUT_BLOCK]).view(num_blocks, HELD_OUT_BLOCK)  # [N, 128]
    device = next(model.parameters()).device
    total = 0.0
    with torch.no_grad():
        for start in range(0, num_blocks, micro_batch_size):
            chunk = blocks[start : start + micro_batch_size].to(device)  # [b, 128]
            logits = model(input_ids=chunk).logits[:, :-1].float()  # [b, 127, vocab]: predicts tokens 2..128
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum"
            ).item()
    predicted = num_blocks * (HELD_OUT_BLOCK - 1)
    return {"loss": total / predicted, "tokens": float(predicted)}  # per predicted token, over all blocks


def pairwise_wins(
    cfg: EvalConfig, prompts: list[str], policy: list[str], baseline: list[str]
) -> tuple[list[float], dict[str, Any]]:
    """Win (1), tie (1/2) or loss (0) of each policy completion against the baseline's, by a pairwise LM
    judge asked in both orders (:func:`rlxf.feedback.lm_judge.judge_pairs`, which cancels a constant position
    bias); with the judge's name and the share of pairs it judged the same way in both orders."""
    assert cfg.win_judge is not None
    template = DEFAULT_PAIRWISE_TEMPLATE
    if cfg.win_judge_template is not None:
        template = Path(cfg.win_judge_template).read_text(encoding="utf-8")
    judge_model = dataclasses.replace(cfg.model, name_or_path=cfg.win_judge, dtype="auto")
    judge = LocalPairJudge.load(judge_model, template, name=cfg.win_judge)
    judgements = judge_pairs(judge, prompts, policy, baseline)
    wins = [1.0 if j.p_first > 0.5 else 0.5 if j.p_first == 0.5 else 0.0 for j in judgements]
    detail = {
        "judge": f"pairwise:{cfg.win_judge}",
        "position_consistency": sum(j.consistent for j in judgements) / len(judgements),
        "p_policy_mean": sum(j.p_first for j in judgements) / len(judgements),
    }
    return wins, detail


def _above(cfg: EvalConfig, rewards: list[float]) -> dict[str, float]:
    """``share_above``: the share of completions whose reward is above ``cfg.reward_threshold`` (if set)."""
    if cfg.reward_threshold is None:
        return {}
    return {"share_above": sum(r > cfg.reward_threshold for r in rewards) / len(rewards)}


def _std(values: list[float]) -> float:
    return float(torch.tensor(values).std().item()) if len(values) > 1 else 0.0


def describe_summary(summary: dict[str, Any]) -> str:
    """A few lines a person reads at the end of ``rlxf eval``."""
    r = summary["reward"]
    lines = [
        f"reward ({summary['reward_spec']}): policy {r['policy']['mean']:.3f} +- {r['policy']['se']:.3f}"
    ]
    if "baseline" in r:
        lines[0] += (
            f", baseline {r['baseline']['mean']:.3f} +- {r['baseline']['se']:.3f}, "
            f"delta {r['delta']:+.3f} +- {r['delta_se']:.3f}, prompts improved {r['share_improved']:.0%}"
        )
        w = summary["win_rate"]
        lines.append(f"win rate over the baseline: {w['value']:.3f} +- {w['se']:.3f} (judge {w['judge']})")
    if "share_above" in r["policy"]:
        above = f"reward above {r['threshold']:g}: policy {r['policy']['share_above']:.0%}"
        if "baseline" in r:
            above += f", baseline {r['baseline']['share_above']:.0%}"
        lines.append(above + " of completions")
    if summary.get("kl"):
        lines.append(f"KL(policy || baseline): {summary['kl']['mean']:.3f} +- {summary['kl']['se']:.3f} nats")
    if summary.get("held_out"):
        h = summary["held_out"]
        lines.append(
            f"held-out loss on {h['data']}: policy {h['policy']['loss']:.4f}"
            + (f", baseline {h['baseline']['loss']:.4f}" if "baseline" in h else "")
            + " nats per token"
        )
    if summary.get("perplexity_under_baseline"):
        p = summary["perplexity_under_baseline"]
        lines.append(f"perplexity under the baseline: policy {p['policy']:.2f}, baseline {p['baseline']:.2f}")
    t = summary["text"]["policy"]
    lines.append(
        f"policy text: length {t['length_mean']:.1f} tokens, distinct-2 {t['distinct_2']:.3f}, "
        f"repetition {t['repetition']:.1%}"
    )
    if summary.get("naturalness"):
        lines.extend(describe_naturalness(summary["naturalness"]))
    return "\n".join(lines)


def describe_naturalness(block: dict[str, Any]) -> list[str]:
    """The naturalness line of :func:`describe_summary` (each ratio policy / baseline), then each flag."""
    names = {
        "lexicon_share": "sentiment-lexicon share",
        "perplexity": "perplexity",
        "distinct_2": "distinct-2",
    }
    parts = []
    for key, name in names.items():
        if key in block:
            ratio = block[key]["ratio"]
            parts.append(f"{name} {ratio:.2f}x" if ratio is not None else f"{name} n/a (baseline 0)")
        else:
            parts.append(f"{name} unavailable")
    flags = block["flags"]
    lines = [
        "naturalness vs the baseline: "
        + ", ".join(parts)
        + (f"; {len(flags)} flag{'s' if len(flags) != 1 else ''}" if flags else "; no flags")
    ]
    lines += [f"  flag: {flag}" for flag in flags]
    return lines


__all__ = [
    "EvalConfig",
    "EvalResult",
    "describe_naturalness",
    "describe_summary",
    "evaluate",
    "held_out_loss",
    "mean_se",
    "naturalness",
    "run_folder_of",
]
