"""Evaluation: what changed between a policy and its baseline (held-out reward, KL, fluency, diversity).

* :mod:`rlxf.eval.evaluate`: ``rlxf eval`` (reward, KL, win rate, perplexity, diversity, length);
* :mod:`rlxf.eval.report`: its self-contained ``report.html`` with plots;
* :mod:`rlxf.eval.text`: statistics of generated text (distinct-n, repeated n-grams).
"""

from rlxf.eval.text import distinct_n, ngrams, repeats_ngram

__all__ = ["distinct_n", "ngrams", "repeats_ngram"]
