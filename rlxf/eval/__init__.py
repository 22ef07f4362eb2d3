"""Evaluation: what changed between a policy and its baseline (held-out reward, KL, fluency, diversity).

* :mod:`rlxf.eval.evaluate`: ``rlxf eval`` (reward, KL, win rate, perplexity, diversity, length);
* :mod:`rlxf.eval.report`: its self-contained ``report.html`` with plots.

Statistics of generated text (distinct-n, repeated n-grams) live in :mod:`rlxf.rollout.text_stats`: the
RL trainer logs them too.
"""
