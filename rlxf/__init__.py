"""rlxf: align language models from human, AI or programmatic feedback.

The loop, a package per stage (see docs/design.md): ``models`` and ``data`` feed ``rollout`` (generation),
``feedback`` scores it, ``algos`` learn from it on the shared loop in ``train``, ``eval`` reports.
"""

import os

# rlxf never downloads at run time: models come from local folders, GGUF files or installed packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

__version__ = "0.1.0"
