"""The shared training loop pieces every trainer uses; no learning algorithm lives here.

* :mod:`rlxf.train.run`: the output folder (``config.yaml``, ``metrics.jsonl``, ``summary.json``,
  ``model/``, ``checkpoints/``, ``tb/``), refusing to mix runs; printing the resolved config.
* :mod:`rlxf.train.checkpoint`: atomic checkpoints and exact resume.
* :mod:`rlxf.train.seed`: seeding, and capturing / restoring every random generator.
* :mod:`rlxf.train.metrics`: ``metrics.jsonl`` + TensorBoard sinks, peak memory.
* :mod:`rlxf.train.progress`: progress bar with ETA, or plain log lines off a terminal.
* :mod:`rlxf.train.optim`: AdamW and learning-rate schedules.

Import from the submodules (``from rlxf.train.checkpoint import save_checkpoint``); importing this
package alone loads nothing heavy.
"""
