"""How long loading the default model takes: the first time (GGUF de-quantisation, if not cached yet) and
after (from the cached HF folder). Each load runs in a fresh interpreter, as a user's command would.

    python benchmarks/model_load.py [--fresh-cache]    # --fresh-cache: use an empty temporary RLXF_HOME
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

LOAD = (
    "import time; t = time.perf_counter()\n"
    "from rlxf.models import ModelConfig, load_model\n"
    "model, tokenizer = load_model(ModelConfig())\n"
    "print(f'{time.perf_counter() - t:.2f} {model.dtype}')\n"
)


def timed_load(env: dict[str, str]) -> tuple[float, str]:
    out = subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, check=True)
    seconds, dtype = out.stdout.strip().splitlines()[-1].split()
    return float(seconds), dtype


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fresh-cache", action="store_true")
    args = parser.parse_args()
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as home:
        if args.fresh_cache:
            env["RLXF_HOME"] = home
        first, dtype = timed_load(env)
        second, _ = timed_load(env)
        third, _ = timed_load(env)
    label = "first load (converts the GGUF file)" if args.fresh_cache else "first load"
    print(f"{label}: {first:.2f} s")
    print(
        f"second load (cached HF folder): {second:.2f} s; third: {third:.2f} s  [{dtype}; target: under 5 s]"
    )
    print("(times cover import of rlxf/transformers inside the timed block: `from rlxf.models import ...`)")


if __name__ == "__main__":
    main()
