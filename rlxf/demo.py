"""``rlxf demo``: the embedded default's main job on the default model, SmolLM2-135M-Instruct.

The seed documents' worked example is sentiment RLHF: the model continues the opening of a review and
learns, from sentiment feedback, to continue it more positively. Until the RL stage lands (issue 4), the
demo runs the part that exists: it loads the default model (converting its GGUF file once) and samples
continuations of review openings with the rollout engine, showing per-token log-probs and finish reasons.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rlxf.config import option
from rlxf.models import ModelConfig, load_model
from rlxf.rollout import HFEngine, SamplingConfig

REVIEW_OPENINGS = [  # neutral to VADER (compound 0), so the continuation alone decides the sentiment
    "The movie was",
    "I stayed at this hotel for three nights and",
    "The pasta at this little restaurant",
    "This phone's battery",
    "Our guided tour of the old town",
    "The last chapters of the book",
]


@dataclass
class DemoConfig:
    """Options of ``rlxf demo``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(max_new_tokens=32, n=2, temperature=1.0, top_p=1.0)
    )
    seed: int = option(0, help="random seed")


def demo(cfg: DemoConfig) -> int:
    print("rlxf demo: sentiment RLHF on SmolLM2-135M-Instruct")
    print("  (this release runs the generation stage only: feedback, reward model, PPO and the report")
    print("   arrive with the RL issues; see README.md)")
    start = time.perf_counter()
    model, tokenizer = load_model(cfg.model)
    print(
        f"[1/2] loaded {cfg.model.name_or_path} ({model.dtype}, {model.device}) in {time.perf_counter() - start:.1f} s"
    )
    start = time.perf_counter()
    batch = HFEngine(model, tokenizer).generate(REVIEW_OPENINGS, cfg.sampling, seed=cfg.seed)
    seconds = time.perf_counter() - start
    tokens = int(batch.completion_mask.sum())
    print(
        f"[2/2] sampled {len(batch)} continuations, {tokens} tokens in {seconds:.1f} s ({tokens / seconds:.0f} tokens/s)"
    )
    for i in range(len(batch)):
        n_tokens = int(batch.completion_mask[i].sum())
        mean_logprob = float(batch.logprobs[i].sum()) / max(n_tokens, 1)
        print(f"\n{batch.prompts[i]!r} ->")
        print(f"  {batch.completions[i].strip()}")
        print(f"  [{n_tokens} tokens, {batch.finish_reasons[i]}, mean log-prob {mean_logprob:.2f}]")
    return 0
