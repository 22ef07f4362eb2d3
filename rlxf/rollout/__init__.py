"""Rollout: generation engines behind one interface, returning token ids, masks, text and log-probs."""

from rlxf.rollout.engine import FinishReason, GenerationEngine, RolloutBatch, SamplingConfig
from rlxf.rollout.hf import HFEngine

__all__ = ["FinishReason", "GenerationEngine", "HFEngine", "RolloutBatch", "SamplingConfig"]
