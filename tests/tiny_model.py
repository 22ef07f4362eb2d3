"""A tiny random causal LM with a real (tiny, trained-here) tokenizer, no download: the model of the tests
(tests/conftest.py's ``tiny_model_dir``) and of benchmarks that check correctness, not speed."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The movie was a delight from start to finish, and the cast was wonderful.",
    "The restaurant served cold soup and the waiter was rude; I will not return.",
    "This book is long but rewarding; the ending surprised me.",
    "Our trip to the coast was sunny, calm and cheap.",
    "The product broke after two days. Terrible quality, avoid it.",
    "Customer service answered quickly and fixed the problem.",
    "Human: hello there! Assistant: hi, how can I help you today?",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~`",
]


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (~300 tokens) trained on a few sentences: encodes any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(tokenizer, seed: int = 0, max_positions: int = 256):
    """A 2-layer Llama with hidden size 32: random weights, fast on CPU, same code path as SmolLM2."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def save_tiny_model(folder: Path, seed: int = 0) -> Path:
    """``folder`` as a plain HF model folder (config, weights, tokenizer with chat template)."""
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
