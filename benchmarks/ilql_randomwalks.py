"""ILQL on trlX's random-walk task: does decoding with the learned advantage find shorter paths than the data?

The task (trlX ``examples/randomwalks``, after Snell et al. 2023): a random directed graph of ``--nodes``
(21) nodes named ``a``, ``b``, ..., each edge present with probability ``--p-edge`` (0.1; redrawn until
every node has a way out), node ``a`` the goal (a sink). ``--walks`` (1,000) random walks start at a
random node other than the goal and take random edges until they reach the goal or hold ``--max-length``
(10) nodes. A walk's reward is its **optimality** ``(L - len) / (L - shortest)`` in [0, 1]: ``len`` the
number of nodes up to the goal (``L`` when it never gets there, or takes an edge that does not exist),
``shortest`` that of the shortest path from its start (breadth-first search). Graph and walks are drawn
with NumPy's ``RandomState(--seed)`` exactly as trlX's ``generate_random_walks`` draws them: the default
seed 1002 gives a dataset of mean optimality 0.790.

Each walk is a ratings record ``{"prompt": "b", "completion": "c f a", "rating": optimality}``: the
start node is the prompt, the rest of the walk the response (trlX splits them the same way). A tokenizer
whose tokens are the node names (a word-level vocabulary of the 21 names, end-of-text and padding) and a
GPT-2 of ``--layers`` blocks of width ``--hidden`` with fresh weights (``rlxf.models.scratch.build_config``)
are saved as the start model; ``rlxf ilql`` trains it from scratch through the library (``--steps``
optimizer steps of ``--batch-size`` walks, constant learning rate ``--lr``; trlX's method settings: tau
0.8, gamma 0.99, CQL 0.1, policy term 1, target heads 0.1 of the way every 5 steps). Then ``rlxf
generate`` decodes greedily from every start node the data has, at each ``--betas`` value (``ilql_beta``;
0 = the LM alone, behaviour cloning), with ``--top-k`` (``ilql_top_k``), and the script prints the mean
optimality of each beta next to the data's, and the issue's three checks:

* the best beta >= 1 reaches a mean optimality >= 0.95;
* it beats beta 0 by >= 0.10;
* beta 0 lands within 0.10 of the data's mean.

``--filtered-bc SHARE`` adds filtered behaviour cloning on the top SHARE of the walks (same decoding).
``--samples N`` adds a column: N walks per start node sampled at temperature 1 (the checks stay greedy's).
Greedy decoding at beta 0 is the argmax of the behaviour policy, whose next-node probabilities are
near-uniform over each node's edges: which edge wins is decided by small differences, so its figure moves
with ``--train-seed``; the sampled column is the behaviour policy's expected optimality. ``--out DIR`` keeps the data, the models and ``randomwalks.json`` (every figure and every
decoded walk); without it a temporary folder is used and deleted.

    .venv/bin/python benchmarks/ilql_randomwalks.py                      # the defaults (see --help)
    .venv/bin/python benchmarks/ilql_randomwalks.py --steps 40 --betas 0 1   # a quick check of the script
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EOS, PAD = "<|endoftext|>", "<|pad|>"


# ---------------------------------------------------------------------------------------------- the task


def node_name(i: int) -> str:
    return chr(ord("a") + i)


def random_walks(nodes: int, max_length: int, walks: int, p_edge: float, seed: int):
    """``(adjacency, walks)`` drawn as trlX's ``generate_random_walks`` draws them (goal = node 0)."""
    import numpy as np

    rng = np.random.RandomState(seed)
    while True:
        adjacency = rng.rand(nodes, nodes) > (1 - p_edge)
        np.fill_diagonal(adjacency, 0)
        if np.all(adjacency.sum(1)):  # every node has a way out
            break
    adjacency[0, :] = 0  # the goal is a sink
    adjacency[0, 0] = 1
    drawn = []
    for _ in range(walks):
        node = rng.randint(nodes)
        while node == 0:
            node = rng.randint(nodes)
        walk = [int(node)]
        for _ in range(max_length - 1):
            node = rng.choice(np.nonzero(adjacency[node])[0])
            walk.append(int(node))
            if node == 0:
                break
        drawn.append(walk)
    return adjacency, drawn


def shortest_lengths(adjacency, max_length: int) -> dict[int, int]:
    """Nodes on the shortest path from each start to the goal (breadth-first), at most ``max_length``."""
    lengths = {}
    for start in range(1, len(adjacency)):
        depth = {start: 1}
        queue = deque([start])
        while queue:
            here = queue.popleft()
            for there in adjacency[here].nonzero()[0]:
                if int(there) not in depth:
                    depth[int(there)] = depth[here] + 1
                    queue.append(int(there))
        lengths[start] = min(depth.get(0, max_length), max_length)
    return lengths


def optimality(walk: list[int], adjacency, shortest: dict[int, int], max_length: int) -> float:
    """``(L - len) / (L - shortest)``: ``len`` = nodes up to the goal; ``L`` when it is never reached or a
    missing edge is taken (trlX's metric)."""
    length = max_length
    for i, node in enumerate(walk[:max_length]):
        if node < 0 or (i > 0 and not adjacency[walk[i - 1], node]):
            break
        if node == 0:
            length = i + 1
            break
    if shortest[walk[0]] >= max_length:
        return 0.0  # no path: nothing to measure against
    return (max_length - length) / (max_length - shortest[walk[0]])


def parse_walk(start: str, completion: str, nodes: int) -> list[int]:
    """The node numbers of a decoded walk (an unknown name is -1: an invalid step)."""
    names = [start, *completion.split()]
    return [ord(n) - ord("a") if len(n) == 1 and 0 <= ord(n) - ord("a") < nodes else -1 for n in names]


# ---------------------------------------------------------------------------------------------- model


def node_tokenizer(nodes: int):
    """A word-level tokenizer whose tokens are the node names (plus end-of-text and padding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {EOS: 0, PAD: 1, **{node_name(i): i + 2 for i in range(nodes)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins the names with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOS, eos_token=EOS, pad_token=PAD)


def save_start_model(folder: Path, nodes: int, max_length: int, layers: int, hidden: int, seed: int) -> Path:
    """A fresh tiny GPT-2 (``rlxf.models.scratch``) and the node tokenizer, as an HF folder."""
    import torch

    from rlxf.models.scratch import build_config, model_for

    tokenizer = node_tokenizer(nodes)
    config = build_config("gpt2", "tiny", tokenizer, max_length=max_length + 4)
    config.n_layer, config.n_embd, config.n_inner = layers, hidden, 4 * hidden
    torch.manual_seed(seed)
    model_for(config, "clm").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------- runs


def train(kind: str, start: Path, data: Path, out: Path, args: argparse.Namespace) -> Path:
    from rlxf import ILQLConfig, ilql, load_config

    options = {
        "model": {"name_or_path": str(start)},
        "data": str(data),
        "out": str(out),
        "eval_split": 0,
        "overwrite": True,
        "seed": args.train_seed,
        "chat_template": "never",
        "objective": kind,
        "bc_top_share": args.filtered_bc or 0.1,
        "tau": 0.8,
        "gamma": 0.99,
        "cql_scale": 0.1,
        "awac_scale": 1.0,
        "polyak_alpha": 0.1,
        "target_sync_every": 5,
        "decode_beta": 1.0,
        "decode_top_k": args.top_k,
        "train": {
            "max_steps": args.steps,
            "global_batch_size": args.batch_size,
            "micro_batch_size": args.batch_size,
            "learning_rate": args.lr,
            "lr_schedule": "constant",
            "warmup_ratio": 0.0,
            "weight_decay": 1e-6,
            "precision": "fp32",
            "log_every": max(args.steps // 10, 1),
        },
    }
    started = time.perf_counter()
    ilql(load_config(ILQLConfig, overrides=options))
    print(f"  {kind}: {args.steps} steps in {time.perf_counter() - started:.0f} s")
    return out / "model"


def decode(
    model_dir: Path, starts: list[str], beta: float | None, args: argparse.Namespace, samples: int = 0
) -> list[str]:
    """Greedy completions from each start node, or (``samples`` > 0) that many sampled at temperature 1."""
    from rlxf import GenerateConfig, generate, load_config

    sampling = {"temperature": 0.0, "max_new_tokens": args.max_length - 1, "batch_size": 256}
    if samples:
        sampling.update(temperature=1.0, n=samples)
    options = {
        "model": {"name_or_path": str(model_dir), "dtype": "float32"},
        "prompt": starts,
        "chat_template": "never",
        "sampling": sampling,
        "seed": 0,
    }
    if beta is not None:
        options.update(ilql_beta=beta, ilql_top_k=args.top_k)
    return [sample.completion for sample in generate(load_config(GenerateConfig, overrides=options))]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=21, help="nodes of the graph (default: %(default)s)")
    parser.add_argument("--walks", type=int, default=1000, help="random walks (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=10, help="nodes per walk, at most (default: 10)")
    parser.add_argument("--p-edge", type=float, default=0.1, help="edge probability (default: 0.1)")
    parser.add_argument("--seed", type=int, default=1002, help="graph and walks (default: trlX's 1002)")
    parser.add_argument(
        "--train-seed", type=int, default=0, help="initialisation and data order (default: 0)"
    )
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=100, help="walks per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=2e-4, help="learning rate, constant (default: 2e-4)")
    parser.add_argument("--layers", type=int, default=2, help="GPT-2 blocks (default: %(default)s)")
    parser.add_argument("--hidden", type=int, default=128, help="GPT-2 width (default: %(default)s)")
    parser.add_argument(
        "--betas",
        type=float,
        nargs="+",
        default=[0.0, 1.0, 4.0, 100.0],
        help="decoding betas (default: 0 1 4 100)",
    )
    parser.add_argument("--top-k", type=int, default=0, help="ilql_top_k (0: every token; default: 0)")
    parser.add_argument(
        "--filtered-bc", type=float, default=None, help="also train filtered BC on this share"
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=0,
        help="also sample N walks per start node at temperature 1 (default: 0)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None, help="keep everything in this folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import logging

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    adjacency, walks = random_walks(args.nodes, args.max_length, args.walks, args.p_edge, args.seed)
    shortest = shortest_lengths(adjacency, args.max_length)
    scores = [optimality(w, adjacency, shortest, args.max_length) for w in walks]
    data_mean = sum(scores) / len(scores)
    starts = sorted({node_name(w[0]) for w in walks})
    print(
        f"graph: {args.nodes} nodes, {int(adjacency.sum()) - 1} edges (seed {args.seed}); {len(walks)} walks, "
        f"mean optimality {data_mean:.3f}; {len(starts)} start nodes"
    )

    keep = Path(args.out) if args.out else None
    with tempfile.TemporaryDirectory() as scratch:
        folder = keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        data = folder / "walks.jsonl"
        records = [
            {"prompt": node_name(w[0]), "completion": " ".join(node_name(n) for n in w[1:]), "rating": s}
            for w, s in zip(walks, scores)
        ]
        data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        start = save_start_model(
            folder / "start-model", args.nodes, args.max_length, args.layers, args.hidden, args.train_seed
        )
        results: dict[str, dict] = {}
        ilql_model = train("ilql", start, data, folder / "ilql", args)
        runs = [(f"ilql beta={beta:g}", ilql_model, beta) for beta in args.betas]
        if args.filtered_bc:
            runs.append(
                (
                    f"filtered BC (top {args.filtered_bc:g})",
                    train("filtered_bc", start, data, folder / "bc", args),
                    None,
                )
            )
        for name, model_dir, beta in runs:
            completions = decode(model_dir, starts, beta, args)
            walks_out = [parse_walk(s, c, args.nodes) for s, c in zip(starts, completions)]
            values = [optimality(w, adjacency, shortest, args.max_length) for w in walks_out]
            results[name] = {
                "beta": beta,
                "mean_optimality": sum(values) / len(values),
                "walks": [f"{s} {c}".strip() for s, c in zip(starts, completions)],
                "optimality": values,
            }
            if args.samples:  # rows are grouped by start node, n per node
                sampled = decode(model_dir, starts, beta, args, samples=args.samples)
                origins = [s for s in starts for _ in range(args.samples)]
                values = [
                    optimality(parse_walk(s, c, args.nodes), adjacency, shortest, args.max_length)
                    for s, c in zip(origins, sampled)
                ]
                results[name]["sampled_mean_optimality"] = sum(values) / len(values)

        sampled_head = f"  sampled (T=1, {args.samples} per node)" if args.samples else ""
        print(f"\n{'decoding, from each start node':<32} greedy{sampled_head}")
        print(f"{'the data (random walks)':<32} {data_mean:.3f}")
        for name, result in results.items():
            sampled = f"  {result['sampled_mean_optimality']:.3f}" if args.samples else ""
            print(f"{name:<32} {result['mean_optimality']:.3f}{sampled}")
        zero = results.get("ilql beta=0", {}).get("mean_optimality")
        steered = [r["mean_optimality"] for r in results.values() if r["beta"] is not None and r["beta"] >= 1]
        checks = {}
        if steered:
            best = max(steered)
            checks["best beta >= 1 reaches 0.95"] = best >= 0.95
            if zero is not None:
                checks["best beta >= 1 beats beta 0 by 0.10"] = best - zero >= 0.10
        if zero is not None:
            checks["beta 0 within 0.10 of the data"] = abs(zero - data_mean) <= 0.10
        for name, ok in checks.items():
            print(f"  {'PASS' if ok else 'FAIL'}  {name}")
        if keep is not None:
            summary = {"args": vars(args), "data_mean": data_mean, "results": results, "checks": checks}
            (keep / "randomwalks.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
