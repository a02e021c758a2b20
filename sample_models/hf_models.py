"""Small Hugging Face ``transformers`` models and their data, for recipes and the false-alarm suite.

Each factory builds a model from a small config (random initialisation as the library does
it, nothing downloaded): 2 layers, hidden size 64, 4 heads by default. Each model returns an
output object with ``.loss`` when its batch holds ``labels``, so a recipe needs no ``loss:``
section: a dict batch is passed as ``model(**batch)``.

Standalone (loaded by path from recipes, e.g. ``../sample_models/hf_models.py:gpt2``); needs
``transformers`` (``pip install "gradoctor[hf]"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from gradoctor.data import token_sequences

if TYPE_CHECKING:  # each factory imports only its own model (transformers loads models lazily)
    from transformers import (
        BatchEncoding,
        BertForSequenceClassification,
        GPT2LMHeadModel,
        LlamaForCausalLM,
        ViTForImageClassification,
    )

# ---- models ------------------------------------------------------------------------------


def gpt2(
    vocab_size: int = 64, n_embd: int = 64, n_layer: int = 2, n_head: int = 4, n_positions: int = 64
) -> GPT2LMHeadModel:
    """GPT-2 (``GPT2Block``s, tied embeddings), dropout off. ``input_ids`` ``[B, T]`` with
    ``T <= n_positions``, ``labels`` ``[B, T]`` equal to ``input_ids`` (the model shifts them)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_positions=n_positions,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=vocab_size - 1,  # the library's default 50256 lies outside a small vocab
        eos_token_id=vocab_size - 1,
        loss_type="ForCausalLM",
    )
    return GPT2LMHeadModel(config)


def llama(
    vocab_size: int = 64,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 64,
) -> LlamaForCausalLM:
    """Llama (RMSNorm, rotary positions, SwiGLU, grouped-query attention). Batches as ``gpt2``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=vocab_size - 1,
        eos_token_id=vocab_size - 1,
        loss_type="ForCausalLM",
    )
    return LlamaForCausalLM(config)


def bert_classifier(
    vocab_size: int = 64,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 128,
    num_labels: int = 2,
    max_position_embeddings: int = 64,
) -> BertForSequenceClassification:
    """BERT with a classification head on the pooled ``[CLS]`` output, dropout off.
    ``input_ids``/``attention_mask`` ``[B, T]``, ``labels`` ``[B]``."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        num_labels=num_labels,
        max_position_embeddings=max_position_embeddings,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def vit_classifier(
    image_size: int = 16,
    patch_size: int = 4,
    num_channels: int = 3,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 128,
    num_labels: int = 3,
) -> ViTForImageClassification:
    """ViT: ``pixel_values`` ``[B, C, H, W]`` cut into ``(H / patch_size)^2`` patches plus
    ``[CLS]``; ``labels`` ``[B]``. Dropout off."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return ViTForImageClassification(config)


# ---- data --------------------------------------------------------------------------------


def causal_lm_sequences(
    batch_size: int = 16,
    seq_len: int = 32,
    vocab_size: int = 64,
    n_samples: int = 512,
    seed: int = 0,
) -> DataLoader:
    """``gradoctor.data.token_sequences`` in the Hugging Face causal-LM convention.

    Hugging Face ``*ForCausalLM`` models shift ``labels`` themselves (position t predicts
    ``labels[t + 1]``), so ``labels`` must equal ``input_ids``; ``token_sequences``' own
    ``labels`` are already shifted and would train a two-tokens-ahead task.

    Returns:
        DataLoader: dicts ``{"input_ids": int64 [B, T], "labels": int64 [B, T]}``, the two equal.
    """
    whole = token_sequences(n_samples, seq_len, vocab_size, n_samples, seed, shuffle=False)
    ids = next(iter(whole))["input_ids"]
    return DataLoader(
        _Rows({"input_ids": ids, "labels": ids.clone()}), batch_size=batch_size, shuffle=True
    )


def token_classes(
    batch_size: int = 16,
    seq_len: int = 16,
    vocab_size: int = 64,
    n_samples: int = 512,
    seed: int = 0,
) -> list[BatchEncoding]:
    """Sequences labelled 1 when most of their tokens lie in the upper half of the vocabulary
    (a task that needs attention to pool over the sequence), as tokenizer-style batches.

    Returns:
        list[BatchEncoding]: ``{"input_ids": int64 [B, T], "attention_mask": int64 [B, T]
        (ones), "labels": int64 [B]}``, ``n_samples / batch_size`` batches, the same order each
        epoch. ``seq_len`` odd or even: ties go to 0.
    """
    from transformers import BatchEncoding

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (n_samples, seq_len), generator=g)
    labels = ((ids >= vocab_size // 2).sum(1) > seq_len // 2).long()
    return [
        BatchEncoding(
            {
                "input_ids": ids[i : i + batch_size],
                "attention_mask": torch.ones_like(ids[i : i + batch_size]),
                "labels": labels[i : i + batch_size],
            }
        )
        for i in range(0, n_samples, batch_size)
    ]


def tinted_images(
    batch_size: int = 16,
    image_size: int = 16,
    num_channels: int = 3,
    n_samples: int = 512,
    seed: int = 0,
) -> DataLoader:
    """Noise images with one channel brightened; the label is that channel (``num_channels``
    classes; every patch carries the answer, so position embeddings need not learn first).

    Returns:
        DataLoader: dicts ``{"pixel_values": float32 [B, C, H, W] (N(0, 1), +1 on the
        labelled channel), "labels": int64 [B] in [0, C)}``.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_samples, num_channels, image_size, image_size, generator=g)
    labels = torch.randint(0, num_channels, (n_samples,), generator=g)
    x[torch.arange(n_samples), labels] += 1.0
    return DataLoader(
        _Rows({"pixel_values": x, "labels": labels}), batch_size=batch_size, shuffle=True
    )


class _Rows(torch.utils.data.Dataset):
    """Rows of equally long named tensors; the default collate stacks them into a dict."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}
