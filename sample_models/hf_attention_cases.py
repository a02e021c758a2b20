"""Hugging Face attention blocks as ``gradoctor check-grads`` cases, with their keyword arguments.

``gradoctor check-grads sample_models/hf_attention_cases.py``

Each block is built from a small config (hidden 8, 2 heads, 3 tokens; nothing downloaded) with the
eager attention kernel, so the attention probabilities are a second, differentiable output
(``(attn_output [B, T, 8], attn_weights [B, heads, T, T])``). The keyword arguments that the
model would pass are given through ``Case(kwargs=...)``: they are moved to float64 with the
inputs but not differentiated. Masks have batch dim 1 (broadcast over the batch), so the
batch-size checks can resize the hidden states alone. Needs ``transformers``.

Not here: Llama's eager attention computes its softmax in float32 whatever the input dtype
(``softmax(..., dtype=torch.float32).to(query.dtype)``), so its float64 finite differences
are float32 rounding noise and the first-order check fails on a correct block.
"""

from __future__ import annotations

import torch

import gradoctor

HIDDEN, HEADS, T, B = 8, 2, 3, 2


def _padding_mask(valid: int) -> torch.Tensor:
    """``float32 [1, 1, 1, T]`` additive mask: 0 on the first ``valid`` keys, a large negative
    number (finite, so finite differences stay finite) on the padding after them."""
    mask = torch.zeros(1, 1, 1, T)
    mask[..., valid:] = -1e4
    return mask


def _causal_mask() -> torch.Tensor:
    """``float32 [1, 1, T, T]`` additive causal mask (query i sees keys j <= i)."""
    return torch.full((T, T), -1e4).triu(1)[None, None]


def gradoctor_cases() -> list[gradoctor.Case]:
    from transformers import BertConfig, GPT2Config
    from transformers.models.bert.modeling_bert import BertSelfAttention
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    torch.manual_seed(0)
    x = torch.randn(B, T, HIDDEN)
    bert = BertConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    gpt2 = GPT2Config(
        n_embd=HIDDEN, n_head=HEADS, attn_pdrop=0.0, resid_pdrop=0.0, attn_implementation="eager"
    )
    return [
        gradoctor.Case(
            "BertSelfAttention",
            BertSelfAttention(bert),
            (x,),
            kwargs={"attention_mask": _padding_mask(valid=2)},
        ),
        gradoctor.Case(
            "GPT2Attention",
            GPT2Attention(gpt2, layer_idx=0),
            (x,),
            kwargs={"attention_mask": _causal_mask()},
        ),
    ]
