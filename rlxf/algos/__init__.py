"""The learners: one file per family, each reading top to bottom, with the math beside the code.

* :mod:`rlxf.algos.sft`: supervised fine-tuning (next-token cross-entropy on completion tokens).
* :mod:`rlxf.algos.reward_model`: a reward model from preference pairs (Bradley-Terry) or ratings (MSE
  per aspect), optionally an ensemble; :mod:`rlxf.algos.reward_eval` scores with it and evaluates it.
* :mod:`rlxf.algos.dpo`: direct preference optimisation (DPO, conservative DPO, IPO).
* :mod:`rlxf.algos.kto`: Kahneman-Tversky optimisation on unpaired (good / bad) examples.

Every learner supplies ``collate``, ``units`` and ``compute_loss`` to the shared loop,
:class:`rlxf.train.loop.Trainer`, which owns batching, gradient accumulation, precision, checkpoints and
resume. The pure loss functions (``sft_loss``, ...) take tensors and return tensors, so they are tested
against hand-computed values. Import from the submodules (``from rlxf.algos.sft import sft``); importing
this package alone loads nothing heavy.
"""
