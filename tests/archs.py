"""Tiny random models of every supported architecture family, built from configs (no downloads)."""

from __future__ import annotations

import torch

from helpers import no_eos

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
             max_position_embeddings=256, initializer_range=0.25)


def _make(cls, cfg):
    torch.manual_seed(0)
    return no_eos(cls(cfg).eval())


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return _make(LlamaForCausalLM, LlamaConfig(**SMALL, num_key_value_heads=2))


def mistral_sliding():
    from transformers import MistralConfig, MistralForCausalLM

    return _make(MistralForCausalLM, MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=5))


def qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _make(Qwen2ForCausalLM, Qwen2Config(**SMALL, num_key_value_heads=2))


def gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(**SMALL, num_key_value_heads=2, head_dim=16, sliding_window=5, attn_implementation="eager")
    return _make(Gemma2ForCausalLM, cfg)


def gemma3_text():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(**SMALL, num_key_value_heads=2, head_dim=16, sliding_window=5)
    return _make(Gemma3ForCausalLM, cfg)


def phi():
    from transformers import PhiConfig, PhiForCausalLM

    return _make(PhiForCausalLM, PhiConfig(**SMALL))


def opt():
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(vocab_size=128, hidden_size=64, ffn_dim=128, num_hidden_layers=4, num_attention_heads=4,
                    max_position_embeddings=256, word_embed_proj_dim=64, init_std=0.25, pad_token_id=0)
    return _make(OPTForCausalLM, cfg)


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return _make(GPT2LMHeadModel, GPT2Config(vocab_size=128, n_embd=64, n_layer=4, n_head=4, n_positions=256,
                                             initializer_range=0.25))


def gpt_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return _make(GPTNeoXForCausalLM, GPTNeoXConfig(**SMALL))


def falcon_mq():
    from transformers import FalconConfig, FalconForCausalLM

    cfg = FalconConfig(vocab_size=128, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, multi_query=True,
                       new_decoder_architecture=False, initializer_range=0.25, bias=False)
    return _make(FalconForCausalLM, cfg)


def phi3():
    from transformers import Phi3Config, Phi3ForCausalLM

    return _make(Phi3ForCausalLM, Phi3Config(**SMALL, num_key_value_heads=2, pad_token_id=0))


DECODERS = {
    "llama": llama,
    "mistral_sliding": mistral_sliding,
    "qwen2": qwen2,
    "gemma2": gemma2,
    "gemma3_text": gemma3_text,
    "phi": phi,
    "opt": opt,
    "gpt2": gpt2,
    "gpt_neox": gpt_neox,
    "falcon_mq": falcon_mq,
    "phi3": phi3,
}
