"""Shared fixtures: a tiny random causal LM with a real (tiny, trained-here) tokenizer, no download.

``tiny_model_dir`` is a plain Hugging Face folder (config.json, model.safetensors, tokenizer files with a
chat template), so tests go through exactly the loading path users take with a local model folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_model import CORPUS, build_tiny_model, build_tiny_tokenizer, save_tiny_model  # noqa: F401


@pytest.fixture(autouse=True)
def one_thread_for_tiny_models(request):
    """Tiny models run fastest on one thread (two threads on 2 busy cores wait on each other); the real
    model keeps torch's default."""
    import torch

    if request.node.get_closest_marker("real_model"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Path to a saved tiny HF model folder (model + tokenizer with chat template)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# The labelling app's database fixtures (a throwaway PostgreSQL server; SQLite and PostgreSQL URLs).
# The labelling app on a fresh database of each backend (tests/label_client.py).
from label_client import app  # noqa: E402, F401
from pg import label_db, postgres_server  # noqa: E402, F401
