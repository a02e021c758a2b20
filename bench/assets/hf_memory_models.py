"""Small Hugging Face ``transformers`` models built from configs (no downloads), for the
memory profiler's accuracy on real decoder blocks (``bench/memory_accuracy.py --cpu --hf``,
``tests/memory/test_hf_decoders.py``).

Each causal LM takes ``gradoctor.data.token_sequences`` dict batches (``input_ids``,
``labels``) and returns an output with ``.loss``; the ViT takes ``images`` dict batches.
"""

from __future__ import annotations

from pathlib import Path

import torch

HERE = Path(__file__).resolve()


def gpt2(
    vocab_size: int = 256,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    seq_len: int = 32,
    dropout: float = 0.1,
    attn: str = "sdpa",
    use_cache: bool = False,
) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=n_heads,
        n_positions=seq_len,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=0,
        eos_token_id=0,
    )
    config.use_cache = use_cache  # training: a KV cache would grow again in each recomputation
    config._attn_implementation = attn
    return GPT2LMHeadModel(config)


def llama(
    vocab_size: int = 256,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    seq_len: int = 32,
    attn: str = "sdpa",
    use_cache: bool = False,
) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        max_position_embeddings=seq_len,
    )
    config.use_cache = use_cache
    config._attn_implementation = attn
    return LlamaForCausalLM(config)


class ViTClassifier(torch.nn.Module):
    """``ViTForImageClassification`` on ``{"pixel_values", "labels"}`` batches."""

    def __init__(
        self,
        image_size: int = 16,
        patch_size: int = 4,
        d_model: int = 32,
        n_layers: int = 2,
        n_heads: int = 4,
        n_classes: int = 10,
    ):
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(
            image_size=image_size,
            patch_size=patch_size,
            num_channels=3,
            hidden_size=d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            intermediate_size=2 * d_model,
            num_labels=n_classes,
        )
        config._attn_implementation = "eager"
        self.vit = ViTForImageClassification(config)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor):
        return self.vit(pixel_values=pixel_values, labels=labels)


def images(batch_size: int = 8, image_size: int = 16, n_classes: int = 10, n: int = 64):
    """Random images as ``{"pixel_values": [B, 3, H, W], "labels": [B]}`` dict batches."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, image_size, image_size, generator=g)
    y = torch.randint(0, n_classes, (n,), generator=g)
    return [
        {"pixel_values": x[i : i + batch_size], "labels": y[i : i + batch_size]}
        for i in range(0, n - batch_size + 1, batch_size)
    ]


def recipe(
    arch: str, precision: str = "fp32", batch_size: int = 8, accum: int = 2, **model: int
) -> dict:
    """A CPU recipe checkpointing ``arch``'s blocks (gpt2, llama, vit)."""
    block = {"gpt2": "GPT2Block", "llama": "LlamaDecoderLayer", "vit": "ViTLayer"}[arch]
    if arch == "vit":
        spec = {"_component_": f"{HERE}:ViTClassifier", **model}
        data = {"_component_": f"{HERE}:images", "batch_size": batch_size}
    else:
        spec = {"_component_": f"{HERE}:{arch}", **model}
        data = {
            "_component_": "gradoctor.data.token_sequences",
            "batch_size": batch_size,
            "seq_len": spec.get("seq_len", 32),
            "vocab_size": spec.get("vocab_size", 256),
            "n_samples": 16 * batch_size,
        }
    return {
        "model": spec,
        "data": data,
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3},
        "precision": precision,
        "train": {"device": "cpu", "accum_steps": accum, "checkpoint": [block], "seed": 0},
    }
