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


# ---------------------------------------------------------------------- vision-language models
def llava():
    """Tiny LLaVA: CLIP tower (16x16 images, 8x8 patches -> 4 image tokens, id 5) + Llama decoder."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tc = LlamaConfig(**SMALL, num_key_value_heads=2)
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          image_size=16, patch_size=8)
    cfg = LlavaConfig(text_config=tc, vision_config=vc, image_token_id=5, vision_feature_layer=-1,
                      vision_feature_select_strategy="default", projector_hidden_act="gelu")
    model = _make(LlavaForConditionalGeneration, cfg)
    ids = torch.cat([torch.full((2, 4), 5), torch.randint(9, 128, (2, 6), generator=torch.Generator().manual_seed(1))], 1)
    return model, ids, {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))}


def qwen2_vl():
    """Tiny Qwen2-VL: one 16x16-patch grid (4x4 patches, merged 2x2 -> 4 image tokens), M-RoPE decoder."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.25,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}),
        vision_config=dict(depth=1, embed_dim=32, num_heads=2, hidden_size=64, patch_size=4, spatial_merge_size=2,
                           temporal_patch_size=2, in_channels=3, mlp_ratio=2),
        image_token_id=5, video_token_id=6, vision_start_token_id=7, vision_end_token_id=8)
    model = _make(Qwen2VLForConditionalGeneration, cfg)
    g = torch.Generator().manual_seed(1)
    ids = torch.cat([torch.full((2, 1), 7), torch.full((2, 4), 5), torch.full((2, 1), 8), torch.randint(9, 128, (2, 5), generator=g)], 1)
    extra = {"pixel_values": torch.randn(32, 96, generator=g), "image_grid_thw": torch.tensor([[1, 4, 4], [1, 4, 4]])}
    return model, ids, extra


def instructblip():
    """Tiny InstructBLIP: vision tower + Q-Former (4 query tokens, image token id 5) + OPT decoder."""
    from transformers import (InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipQFormerConfig,
                              InstructBlipVisionConfig, OPTConfig)

    tc = OPTConfig(vocab_size=128, hidden_size=64, ffn_dim=128, num_hidden_layers=4, num_attention_heads=4,
                   word_embed_proj_dim=64, max_position_embeddings=256, init_std=0.25, pad_token_id=0)
    vc = InstructBlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=16, patch_size=8)
    qc = InstructBlipQFormerConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, encoder_hidden_size=32)
    cfg = InstructBlipConfig(vision_config=vc.to_dict(), qformer_config=qc.to_dict(), text_config=tc.to_dict(),
                             num_query_tokens=4, image_token_index=5)
    model = _make(InstructBlipForConditionalGeneration, cfg)
    g = torch.Generator().manual_seed(1)
    ids = torch.cat([torch.full((2, 4), 5), torch.randint(9, 128, (2, 6), generator=g)], 1)
    extra = {"pixel_values": torch.randn(2, 3, 16, 16, generator=g), "qformer_input_ids": torch.randint(3, 128, (2, 5), generator=g),
             "qformer_attention_mask": torch.ones(2, 5, dtype=torch.long)}
    return model, ids, extra


VLMS = {"llava": llava, "qwen2_vl": qwen2_vl, "instructblip": instructblip}
