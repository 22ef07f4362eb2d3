"""Pre-training with human feedback on PEP8 (Korbak et al. 2023's PEP8 task, small): six tiny GPT-2 models
from scratch, one per objective, on the same code with the same token budget. How much PEP8 do their
samples violate, and at what held-out loss on clean code?

The corpus is built here from the standard library (nothing is downloaded; nothing is committed). It uses
the one-line statements pycodestyle finds clean (``rlxf.data.stdlib_corpus.stdlib_code_lines``); the
first ``--lines`` go to training, with a PEP8 violation injected into ``--bad-share`` of them
(``pep8_corpus``). The next ``--held-out`` clean lines are the held-out set (``eval_data``). Each line is
one document, scored whole (``segment=document``) by the ``pep8`` reward: minus the violations per
character.

For each objective (``none`` = MLE, ``filter``, ``conditional``, ``unlikelihood``, ``rwr``, ``awr``) the
script runs::

    rlxf pretrain --arch gpt2 --size tiny --data TRAIN --eval-data CLEAN --preference P --score pep8 \\
        --segment document --max-steps STEPS ...

It prints the held-out loss on clean lines (``eval/loss``) and the misalignment of ``--samples`` samples
(``eval/misalignment``: violations per character, lower is better). ``conditional`` is sampled after
``<|good|>`` with classifier-free guidance against ``<|bad|>`` (``--guidance-scale``, 3; 1 turns it off); it
also prints its samples after ``<|bad|>`` and its plain samples after ``<|good|>`` (``unguided``).
``--out DIR`` keeps the runs and writes ``phf_pep8.json`` and ``phf_pep8.png``, a plot of misalignment
against held-out loss (the paper's two-axis view).

Run on an otherwise idle machine (each model takes about 7 minutes on 2 CPU cores)::

    .venv/bin/python benchmarks/phf_pep8.py --out runs/phf-pep8
    .venv/bin/python benchmarks/phf_pep8.py --steps 20 --lines 2000 --samples 32 --out /tmp/phf-smoke   # a check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ("none", "filter", "conditional", "unlikelihood", "rwr", "awr")


def build_corpus(folder: Path, lines: int, held_out: int, bad_share: float, seed: int) -> tuple[Path, Path]:
    """The training lines (``bad_share`` of them with a violation injected) and the clean held-out lines."""
    sys.path.insert(0, str(ROOT))
    from rlxf.data.stdlib_corpus import pep8_corpus, stdlib_code_lines, write_jsonl_corpus

    train = folder / "train.jsonl"
    clean = folder / "clean.jsonl"
    pairs = list(pep8_corpus(bad_share, seed=seed, max_lines=lines))
    write_jsonl_corpus((line for line, _ in pairs), train)
    write_jsonl_corpus(islice(stdlib_code_lines(), lines, lines + held_out), clean)
    injected = sum(bad for _, bad in pairs)
    print(
        f"corpus: {len(pairs)} training lines ({injected} with a violation), {held_out} clean held-out lines"
    )
    return train, clean


def run(objective: str, train: Path, clean: Path, out: Path, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        "-m",
        "rlxf",
        "pretrain",
        "--arch",
        "gpt2",
        "--size",
        args.size,
        "--data",
        str(train),
        "--eval-data",
        str(clean),
        "--preference",
        objective,
        "--score",
        "pep8",
        "--segment",
        "document",
        "--max-steps",
        str(args.steps),
        "--vocab-size",
        str(args.vocab_size),
        "--out",
        str(out),
        "--overwrite",
        f"misalignment_samples={args.samples}",
        f"sample_max_new_tokens={args.sample_tokens}",
        f"seed={args.seed}",
        "train.eval_every=0",
        *([f"alpha={args.unlikelihood_alpha}"] if objective == "unlikelihood" else []),
        *([f"beta={args.rwr_beta}"] if objective == "rwr" else []),
        *([f"beta={args.awr_beta}"] if objective == "awr" else []),
        *([f"guidance_scale={args.guidance_scale}"] if objective == "conditional" else []),
    ]
    started = time.perf_counter()
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        code = subprocess.run(command, stdout=f, stderr=f, cwd=ROOT, env={**os.environ}).returncode
    if code != 0:
        raise RuntimeError(f"{objective}: exit status {code}\n{log.read_text()[-3000:]}")
    final = json.loads((out / "summary.json").read_text())["metrics"]
    # the standard error of the misalignment, from the samples it was measured on (not <|bad|>'s, and at the
    # run's guidance scale: a conditional run with guidance also holds unguided samples)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    scale = args.guidance_scale if objective == "conditional" else 1.0
    scores = [-s["score"] for s in samples if s["prefix"] != "<|bad|>" and s["guidance_scale"] == scale]
    mean = sum(scores) / len(scores)
    se = (sum((x - mean) ** 2 for x in scores) / (len(scores) - 1) / len(scores)) ** 0.5
    return {
        "misalignment_se": se,
        "objective": objective,
        "seconds": time.perf_counter() - started,
        "held_out_loss": final["eval/loss"],
        "misalignment": final["eval/misalignment"],
        "misalignment_bad_token": final.get("eval/misalignment_bad_token"),
        "misalignment_unguided": final.get("eval/misalignment_unguided"),
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in results:
        ax.scatter(r["held_out_loss"], r["misalignment"], s=40)
        ax.annotate(
            r["objective"], (r["held_out_loss"], r["misalignment"]), textcoords="offset points", xytext=(5, 4)
        )
        if r.get("misalignment_unguided") is not None:  # the same model sampled without guidance
            ax.scatter(r["held_out_loss"], r["misalignment_unguided"], s=40, marker="x")
            ax.annotate(
                f"{r['objective']} (unguided)",
                (r["held_out_loss"], r["misalignment_unguided"]),
                textcoords="offset points",
                xytext=(5, 4),
            )
    ax.set_xlabel("held-out loss on clean lines (nats per token)")
    ax.set_ylabel("misalignment: PEP8 violations per character of samples")
    ax.set_title("Pre-training with human feedback, PEP8 (tiny GPT-2)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", default="tiny", choices=("tiny", "small"), help="model size (rlxf pretrain --size)"
    )
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps per model (16 x 128 tokens)")
    parser.add_argument("--lines", type=int, default=40000, help="training lines")
    parser.add_argument("--held-out", type=int, default=2000, help="clean held-out lines")
    parser.add_argument(
        "--bad-share", type=float, default=0.3, help="share of training lines with a violation"
    )
    parser.add_argument("--samples", type=int, default=512, help="samples per model for the misalignment")
    parser.add_argument("--sample-tokens", type=int, default=64, help="tokens per sample")
    parser.add_argument("--vocab-size", type=int, default=2000, help="BPE tokens (0.5 M training tokens)")
    # The temperatures are set for this reward's scale. A line with one violation scores about -0.025 (one
    # violation in ~40 characters) and a clean one 0, so the authors' betas (RWR 10, AWR 1 for PEP8) give
    # weights exp(r / beta) of 0.998 and 0.975: MLE in practice. beta 0.01 gives a bad line exp(-2.5) = 0.08
    # of a clean line's weight (RWR), and AWR's advantages of -0.02..+0.01 weights of 0.14..2.7.
    parser.add_argument("--rwr-beta", type=float, default=0.01, help="RWR temperature (rlxf's default: 10)")
    parser.add_argument("--awr-beta", type=float, default=0.01, help="AWR temperature (rlxf's default: 1)")
    parser.add_argument("--unlikelihood-alpha", type=float, default=1.0, help="unlikelihood weight")
    # Classifier-free guidance against <|bad|> (rlxf.algos.phf). The conditional run also reports its plain,
    # unguided samples (the paper's sampling), so one run gives both figures.
    parser.add_argument(
        "--guidance-scale", type=float, default=3.0, help="conditional: guidance at sampling (1: none)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--out", type=Path, help="keep the runs here, with phf_pep8.json and phf_pep8.png")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rlxf-phf-pep8-") as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        train, clean = build_corpus(work, args.lines, args.held_out, args.bad_share, args.seed)
        results = []
        for objective in args.objectives:
            print(f"--- {objective}", flush=True)
            results.append(run(objective, train, clean, work / objective, args))
        mle = next((r for r in results if r["objective"] == "none"), None)
        print(
            f"\n{'objective':>14}{'held-out loss':>15}{'misalignment':>15}{'+- SE':>9}{'vs MLE':>9}"
            f"{'after <|bad|>':>15}{'unguided':>10}{'s':>7}"
        )
        for r in results:
            ratio = f"{r['misalignment'] / mle['misalignment']:.2f}x" if mle and mle["misalignment"] else "-"
            bad = f"{r['misalignment_bad_token']:.5f}" if r["misalignment_bad_token"] is not None else "-"
            plain = r["misalignment_unguided"]
            plain_text = f"{plain:.5f}" if plain is not None else "-"
            print(
                f"{r['objective']:>14}{r['held_out_loss']:>15.4f}{r['misalignment']:>15.5f}"
                f"{r['misalignment_se']:>9.5f}{ratio:>9}{bad:>15}{plain_text:>10}"
                f"{r['seconds']:>7.0f}"
            )
        print("(misalignment: PEP8 violations per character of the samples, lower is better)")
        if any(r["misalignment_unguided"] is not None for r in results):
            print(
                f"(conditional: sampled after <|good|> with guidance {args.guidance_scale:g} against <|bad|>, "
                "and after <|bad|> against <|good|>; 'unguided': after <|good|>, guidance 1, the paper's)"
            )
        if args.out:
            (args.out / "phf_pep8.json").write_text(
                json.dumps({"settings": vars(args), "results": results}, default=str, indent=2)
            )
            plot(results, args.out / "phf_pep8.png")
            print(f"written: {args.out / 'phf_pep8.json'}, {args.out / 'phf_pep8.png'}")


if __name__ == "__main__":
    main()
