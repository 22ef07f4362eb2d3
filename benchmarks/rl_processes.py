"""``rlxf rl`` on one process vs two (torchrun, gloo on CPU, data parallel): seconds per RL step.

The same GRPO run at the same global batch, once as ``python -m rlxf rl ...`` and once as
``python -m torch.distributed.run --nproc_per_node 2 -m rlxf rl ...``, each in its own launch, one after
the other: the default model (``smollm2-135m-instruct``, the registry's local HF folder; ``--model`` for
another, ``--tiny`` for the tests' tiny random Llama of tests/tiny_model.py, to check the script itself),
the ``train`` openings of ``rlxf/assets/review_openings.jsonl`` as raw text (``chat_template=never``), the
``sentiment`` reward, ``estimator=grpo``, 16 prompts x 4 samples = 64 completions of at most 32 new tokens
per step (``prompts_per_step=16``, ``sampling.n=4``; on 2 processes each samples and trains on 8 prompts'
32 completions), ``micro_batch_size=16``, ``train.precision=bf16-mixed`` (``--precision``), no held-out
set (``eval_split=0``), the default ``kl.coef``, ``--steps`` steps (default 4).

Threads: the launches share the machine's cores (``os.sched_getaffinity``): one process gets
``OMP_NUM_THREADS`` = all of them, each of 2 processes half of them (``cores // processes``, at least 1),
so both configurations use the same cores. ``CUDA_VISIBLE_DEVICES`` is emptied: this measures the CPU.
The environment is the one tests/test_distributed.py uses for gloo on CPU (``TOKENIZERS_PARALLELISM=false``,
its own free ``--master_port``), with the Hugging Face offline switches set: no network.

``--ray N`` adds a third launch: one process with ``rollout.placement=ray``, a trainer actor with all the
cores and ``N`` rollout actors with ``cores // N`` each (generation and training take turns, so they do
not compete), on a Ray started for the run; its ``time/sync`` is the push of the policy's weights to the
actors through the object store, checked by SHA-256.

Printed for each launch, from the run's ``metrics.jsonl`` (one record per step): seconds per step,
the sum of ``time/generate + time/score + time/train + time/sync`` (on 2 processes each is the processes' mean; they
end each step together, at the gradients' all-reduce and the gathers), and the median of each part and of
``tokens_per_s`` (the tokens of every process over the main process's step time). Medians are over steps
2..N: step 1 is warm-up (first-call allocations, lazy imports, the VADER lexicon). Then the speed-up, the
1-process seconds per step over the 2-process ones, and the launch's wall time (imports, model loading,
the steps, saving the model) next to the run's ``summary.json`` ``wall_time_s``.

Run (on an otherwise idle machine: with more threads than free cores the figures measure the scheduler)::

    .venv/bin/python benchmarks/rl_processes.py                       # 1 and 2 processes, 4 steps
    .venv/bin/python benchmarks/rl_processes.py --steps 6 --precision fp32 --out rl_processes.json
    .venv/bin/python benchmarks/rl_processes.py --processes 2 --keep runs/rl-processes
    .venv/bin/python benchmarks/rl_processes.py --processes 1 --ray 2  # 1 process vs Ray: trainer + 2 actors
    .venv/bin/python benchmarks/rl_processes.py --tiny --steps 2      # a quick check of the script
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROMPTS_FILE = ROOT / "rlxf" / "assets" / "review_openings.jsonl"
PROMPTS_PER_STEP = 16
SAMPLES = 4
MICRO_BATCH = 16
PHASES = ("generate", "score", "train", "sync")


def cores() -> int:
    """The cores this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_process(processes: int) -> int:
    return max(1, cores() // processes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(folder: Path) -> Path:
    """The tests' tiny random Llama (tests/tiny_model.py: 2 layers, hidden 32, tied embeddings)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import save_tiny_model

    return save_tiny_model(folder)


def rl_args(model: str, out: Path, args: argparse.Namespace) -> list[str]:
    return [
        "-m",
        "rlxf",
        "rl",
        "--model",
        model,
        "--prompts",
        str(PROMPTS_FILE),
        "--reward",
        "sentiment",
        "--out",
        str(out),
        "prompts_split=train",
        "eval_split=0",
        "chat_template=never",
        "estimator=grpo",
        f"sampling.n={SAMPLES}",
        f"sampling.max_new_tokens={args.max_new_tokens}",
        f"sampling.batch_size={PROMPTS_PER_STEP * SAMPLES}",  # one generate call per process and step
        f"prompts_per_step={PROMPTS_PER_STEP}",
        f"micro_batch_size={MICRO_BATCH}",
        f"num_steps={args.steps}",
        f"train.precision={args.precision}",
        "train.log_every=1",
        "train.save_every=0",
        "overwrite=true",
    ]


def command(rl: list[str], processes: int) -> list[str]:
    """``python -m rlxf rl ...`` on 1 process, else under torchrun (as tests/test_distributed.py)."""
    if processes == 1:
        return [sys.executable, *rl]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_port",
        str(free_port()),
        *rl,  # torchrun's own -m: rlxf as a module on each process
    ]


def environment(processes: int) -> dict[str, str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads_per_process(processes)),
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",  # the CPU, gloo
    }
    for offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.setdefault(offline, "1")  # no network, ever: fail rather than reach out
    return env


def ray_args(workers: int) -> list[str]:
    """A trainer actor with every core, ``workers`` rollout actors sharing them (they take turns)."""
    return [
        "rollout.placement=ray",
        f"rollout.num_workers={workers}",
        f"ray.trainer_num_cpus={cores()}",
        f"ray.num_cpus_per_worker={max(1, cores() // workers)}",
    ]


def run(
    processes: int, model: str, work: Path, args: argparse.Namespace, ray_workers: int = 0
) -> dict[str, Any]:
    """One launch to the end (exit status 0, else raise with its stderr's tail); its per-step figures.
    ``ray_workers``: one process with the trainer and that many rollout workers as Ray actors."""
    name = f"ray{ray_workers}" if ray_workers else f"{processes}proc"
    out = work / name
    stdout_log, stderr_log = work / f"{name}.stdout.log", work / f"{name}.stderr.log"
    cmd = command(rl_args(model, out, args) + (ray_args(ray_workers) if ray_workers else []), processes)
    threads = threads_per_process(processes)
    where = f"log: {stderr_log}" if args.keep else "its stderr's tail is shown if it fails"
    each = " each" if processes > 1 else ""
    what = (
        f"Ray: a trainer actor ({cores()} threads) + {ray_workers} rollout actors "
        f"({max(1, cores() // ray_workers)} threads each)"
        if ray_workers
        else f"{processes} process{'es' if processes > 1 else ''}, OMP_NUM_THREADS={threads}{each}"
    )
    print(f"--- {what}: {args.steps} steps ({where})", flush=True)
    started = time.perf_counter()
    with stdout_log.open("w") as so, stderr_log.open("w") as se:
        code = subprocess.run(cmd, env=environment(processes), stdout=so, stderr=se, cwd=ROOT).returncode
    wall = time.perf_counter() - started
    if code != 0:
        tail = stderr_log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the {processes}-process run exited {code}: {' '.join(cmd)}\n{tail}")
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = sorted((json.loads(x) for x in lines if x.strip()), key=lambda r: r["step"])
    records = [r for r in records if "time/train" in r]  # the step records (no held-out ones: eval_split=0)
    if len(records) != args.steps:
        raise RuntimeError(f"the {processes}-process run logged {len(records)} steps, not {args.steps}")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    result: dict[str, Any] = {
        "launch": f"ray, {ray_workers} workers" if ray_workers else str(processes),
        "processes": processes,
        "ray_workers": ray_workers,
        "threads_per_process": threads,
        "launch_wall_s": wall,
        "run_wall_s": summary.get("wall_time_s"),
        "seconds": [sum(r[f"time/{p}"] for p in PHASES) for r in records],
        "tokens_per_s": [r["tokens_per_s"] for r in records],
        "reward": [r["reward/mean"] for r in records],
        **{f"{p}_seconds": [r[f"time/{p}"] for r in records] for p in PHASES},
    }
    timed = slice(1, None)  # step 1 is warm-up
    result["median_s"] = statistics.median(result["seconds"][timed])
    result["median_tokens_per_s"] = statistics.median(result["tokens_per_s"][timed])
    for p in PHASES:
        result[f"median_{p}_s"] = statistics.median(result[f"{p}_seconds"][timed])
    return result


def report(args: argparse.Namespace, model: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    torch_version = importlib.metadata.version("torch")
    threads = ", ".join(
        f"{r['processes']} proc x {r['threads_per_process']}" for r in results if not r["ray_workers"]
    )
    print()
    print(
        f"GRPO, {model}, train.precision={args.precision}: {PROMPTS_PER_STEP} prompts x {SAMPLES} samples = "
        f"{PROMPTS_PER_STEP * SAMPLES} completions per step (<= {args.max_new_tokens} new tokens), "
        f"micro-batches of {MICRO_BATCH}, {args.steps} steps; OMP_NUM_THREADS {threads}; "
        f"torch {torch_version}, {cores()} cores (cpu_count {os.cpu_count()}), gloo on CPU"
    )
    head = ("launch", "threads", "s/step", "generate", "score", "train", "sync", "tokens/s", "launch s")
    print("\n" + f"{head[0]:>16}" + "".join(f"{h:>10}" for h in head[1:]))
    for r in results:
        cells = (
            "-" if r["ray_workers"] else str(r["threads_per_process"]),
            f"{r['median_s']:.3f}",
            f"{r['median_generate_s']:.3f}",
            f"{r['median_score_s']:.3f}",
            f"{r['median_train_s']:.3f}",
            f"{r['median_sync_s']:.3f}",
            f"{r['median_tokens_per_s']:.0f}",
            f"{r['launch_wall_s']:.1f}",
        )
        print(f"{r['launch']:>16}" + "".join(f"{c:>10}" for c in cells))
    print(
        f"(medians over steps 2..{args.steps}, step 1 is warm-up; s/step = generate + score + train + sync; "
        "launch s: the whole launch, with imports, loading and saving)"
    )
    summary: dict[str, Any] = {"settings": {**vars(args), "model": model}, "results": results}
    by_launch = {r["launch"]: r for r in results}
    if "1" in by_launch:
        for launch, r in by_launch.items():
            if launch != "1":
                speed_up = by_launch["1"]["median_s"] / r["median_s"]
                summary[f"speed_up_{launch}_over_1"] = speed_up
                print(
                    f"speed-up, {launch} over 1 process: {speed_up:.2f}x (s/step of 1 / s/step of {launch})"
                )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="registry name or local HF folder")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny random model (a quick check)")
    parser.add_argument("--steps", type=int, default=4, help="RL steps per run (>= 2; step 1 is warm-up)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to run")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16-mixed", "bf16"], default="bf16-mixed", help="train.precision"
    )
    parser.add_argument("--max-new-tokens", type=int, default=32, help="sampling.max_new_tokens")
    parser.add_argument(
        "--ray", type=int, default=0, metavar="N", help="also run the trainer + N rollout workers on Ray"
    )
    parser.add_argument("--keep", type=Path, help="put the runs (and their logs) here and keep them")
    parser.add_argument("--out", type=Path, help="also write every figure here as JSON")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2: step 1 is warm-up and is not timed")
    if any(n < 1 for n in args.processes):
        parser.error("--processes must be >= 1")

    with tempfile.TemporaryDirectory(prefix="rlxf-rl-processes-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = str(tiny_model(work / "tiny-model")) if args.tiny else args.model
        results = [run(n, model, work, args) for n in args.processes]
        if args.ray:
            results.append(run(1, model, work, args, ray_workers=args.ray))
    summary = report(args, model, results)
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
