"""The rlxf vLLM server: a vLLM engine in its own process, for ``vllm.mode: server``.

    python -m rlxf.rollout.vllm_server --model DIR --port 8000 [--gpu-memory-utilization 0.9] ...

``--model`` is the policy's starting point (a Hugging Face folder or a registry name); the trainer pushes
its weights when it connects and after every update, so the server always samples from the policy being
trained. The client is :class:`rlxf.rollout.vllm.ServerBackend`. Endpoints (JSON unless said):

==========================  ==============================================================================
``GET /info``               ``{"dtype": "bfloat16"}``: the engine's dtype, which pushed weights are cast to
``POST /generate``          ``{"prompts": [[token ids], ...], "params": [{SamplingParams keywords}, ...]}``
                            -> ``{"completions": [{token_ids, logprobs, finish_reason, stop_reason}, ...]}``
``POST /load_weights``      body: safetensors bytes of some ``name -> tensor`` (Hugging Face names), loaded
                            with vLLM's ``model.load_weights`` -> ``{"loaded": count}``
``POST /reset_prefix_cache``  after a push: cached KV was computed with the old weights
``GET /fingerprints``       ``{"workers": [{"params": {name: [sum, sum of squares, sum of abs]}, "packed":
                            {...}}, ...]}``: what the client checks a push against
==========================  ==============================================================================

One engine serves one request at a time (a lock), in order: one trainer drives it. On GPUs, weights would
move faster over NCCL (or CUDA IPC on one node) than as safetensors bytes over HTTP; that transfer is left
out, as is authentication: the server binds to 127.0.0.1 unless told otherwise, and anyone who can reach
its port can replace its weights.

This module has no ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at run
time, and ``Request`` is imported inside :func:`build_app` (FastAPI is the ``label`` extra's, not a core
dependency).
"""

import argparse
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from rlxf.rollout.vllm import InProcessBackend, VLLMConfig, engine_fingerprints, import_vllm, llm_kwargs


def build_app(llm: Any, sampling_params: Callable[..., Any]) -> Any:
    """The FastAPI app serving ``llm`` (a ``vllm.LLM``; the tests pass a stand-in) and its ``SamplingParams``."""
    from fastapi import FastAPI, HTTPException, Request
    from safetensors.torch import load
    from starlette.concurrency import run_in_threadpool

    engine = InProcessBackend(llm, sampling_params)
    lock = threading.Lock()  # vLLM's LLM is not made for concurrent calls
    app = FastAPI(title="rlxf vLLM server")

    def locked(call: Callable[..., Any], *args: Any) -> Any:
        with lock:
            try:
                return call(*args)
            except (ValueError, TypeError) as exc:  # bad sampling parameters, unknown weight names
                raise HTTPException(status_code=400, detail=str(exc)) from exc

    @app.get("/info")
    def info() -> dict:
        return {"dtype": str(locked(engine.dtype)).removeprefix("torch.")}

    @app.post("/generate")
    async def generate(request: Request) -> dict:
        body = await request.json()
        prompts, params = body["prompts"], body["params"]
        if len(prompts) != len(params):
            raise HTTPException(status_code=400, detail="one params object per prompt")
        completions = await run_in_threadpool(locked, engine.generate, prompts, params)
        return {"completions": [asdict(c) for c in completions]}

    @app.post("/load_weights")
    async def load_weights(request: Request) -> dict:
        tensors = load(await request.body())
        # A list, not a generator: with tensor parallelism the function goes to worker processes pickled.
        await run_in_threadpool(locked, engine.load_weights, list(tensors.items()))
        return {"loaded": len(tensors)}

    @app.post("/reset_prefix_cache")
    def reset_prefix_cache() -> dict:
        locked(llm.reset_prefix_cache)
        return {"ok": True}

    @app.get("/fingerprints")
    def fingerprints() -> dict:
        return {"workers": locked(llm.apply_model, engine_fingerprints)}

    return app


def main(argv: list[str] | None = None) -> None:
    """``python -m rlxf.rollout.vllm_server``: build the engine from the flags and serve it."""
    parser = argparse.ArgumentParser(
        prog="python -m rlxf.rollout.vllm_server",
        description="Serve a vLLM engine to rlxf's vLLM rollout engine (vllm.mode=server).",
    )
    parser.add_argument("--model", required=True, help="HF model folder or registry name: the policy's start")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="share of the GPU's memory")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs to shard the model over")
    parser.add_argument("--max-model-len", type=int, default=0, help="0 = the model's context")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float16"], default="auto")
    parser.add_argument("--no-prefix-caching", action="store_true", help="turn vLLM's prefix caching off")
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    args = parser.parse_args(argv)
    config = VLLMConfig(
        mode="server",
        gpu_memory_utilization=args.gpu_memory_utilization,
        tensor_parallel_size=args.tensor_parallel_size,
        max_model_len=args.max_model_len,
        enable_prefix_caching=not args.no_prefix_caching,
        dtype=args.dtype,
        enforce_eager=args.enforce_eager,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from rlxf.models.registry import resolve_model

    # Weight pushes and checks call functions on the engine's model (LLM.apply_model): keep vLLM's engine
    # core in this process, and let tensor-parallel workers receive those functions pickled.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if args.tensor_parallel_size > 1:
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    vllm = import_vllm()
    llm = vllm.LLM(**llm_kwargs(config, resolve_model(args.model)))

    import uvicorn

    uvicorn.run(build_app(llm, vllm.SamplingParams), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
