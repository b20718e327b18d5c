"""Tiny random models of every architecture family the adapters cover, built from configs (no downloads).

``build(name)`` returns a model in eval mode whose generation config never stops early (no EOS).
``TEXT`` are decoder-only language models, ``VLM`` vision-language models; ``vlm_inputs(name, model, batch)``
makes prompts with the right number of image tokens and random pixel values.
"""

from __future__ import annotations

import functools

import torch
import transformers as T

from helpers import no_eos

V = 128  # text vocabulary
BASE = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=256, initializer_range=0.25)


def _text(name):
    b = dict(BASE)
    if name == "llama":
        return T.LlamaForCausalLM(T.LlamaConfig(**b, num_key_value_heads=2))
    if name == "mistral":  # prompts are longer than the window: the cache is trimmed every step
        return T.MistralForCausalLM(T.MistralConfig(**b, num_key_value_heads=2, sliding_window=4))
    if name == "qwen2":
        return T.Qwen2ForCausalLM(T.Qwen2Config(**b, num_key_value_heads=2))
    if name == "qwen3":  # k_norm on the key projection's output before the value projection runs
        return T.Qwen3ForCausalLM(T.Qwen3Config(**b, num_key_value_heads=2, head_dim=8))
    if name == "gemma2":  # layer 0 sliding (window 4), layer 1 global
        return T.Gemma2ForCausalLM(T.Gemma2Config(**b, num_key_value_heads=2, head_dim=8, sliding_window=4))
    if name == "gemma3_text":
        return T.Gemma3ForCausalLM(T.Gemma3TextConfig(**b, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                                      layer_types=["sliding_attention", "full_attention"]))
    if name == "phi":
        return T.PhiForCausalLM(T.PhiConfig(**b))
    if name == "opt":
        c = dict(b, ffn_dim=64, word_embed_proj_dim=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)
        del c["intermediate_size"], c["initializer_range"]
        return T.OPTForCausalLM(T.OPTConfig(**c, init_std=0.25))
    if name == "gpt2":
        return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_layer=2, n_embd=32, n_head=4, n_positions=256,
                                              initializer_range=0.25, bos_token_id=1, eos_token_id=2))
    if name == "gpt_neox":
        return T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**b))
    if name.endswith("_eager"):  # the same weights with eager attention (Falcon's eager and sdpa paths differ on padding)
        model = _text(name.removesuffix("_eager"))
        model.config._attn_implementation_internal = "eager"
        return model
    if name == "falcon":  # multi-query (Falcon-7B layout)
        c = {k: v for k, v in b.items() if k != "intermediate_size"}
        return T.FalconForCausalLM(T.FalconConfig(**c, bos_token_id=1, eos_token_id=2))
    if name == "falcon_new":  # new decoder architecture (Falcon-40B layout), GQA 4/2
        c = {k: v for k, v in b.items() if k != "intermediate_size"}
        return T.FalconForCausalLM(T.FalconConfig(**c, new_decoder_architecture=True, num_kv_heads=2,
                                                  bos_token_id=1, eos_token_id=2))
    if name == "phi3":
        return T.Phi3ForCausalLM(T.Phi3Config(**b, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    raise KeyError(name)


IMAGE_TOKEN = 150
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=16, patch_size=8)


def _vlm(name):
    txt = dict(BASE, vocab_size=160)
    if name == "llava":  # CLIP 16x16 / patch 8 -> 4 patches -> 4 image tokens ("default" drops CLS)
        cfg = T.LlavaConfig(vision_config=T.CLIPVisionConfig(**VISION, projection_dim=32),
                            text_config=T.LlamaConfig(**txt, num_key_value_heads=2), image_token_id=IMAGE_TOKEN)
        return T.LlavaForConditionalGeneration(cfg)
    if name == "qwen2_vl":  # 16x16 image, patch 4 -> 4x4 grid, merge 2 -> 4 image tokens; M-RoPE sections 1+1+2 = D/2
        text = dict(txt, num_key_value_heads=2, rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2],
                                                                  "rope_theta": 10000.0})
        vis = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=4, patch_size=4, spatial_merge_size=2,
                   temporal_patch_size=2)
        cfg = T.Qwen2VLConfig(text_config=text, vision_config=vis, image_token_id=IMAGE_TOKEN, video_token_id=151,
                              vision_start_token_id=152, vision_end_token_id=153)
        return T.Qwen2VLForConditionalGeneration(cfg)
    if name == "qwen2_5_vl":  # same token layout; window attention in the vision tower (window 8 px = 1 merged patch)
        text = dict(txt, num_key_value_heads=2, rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2],
                                                                  "rope_theta": 10000.0})
        vis = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=4, spatial_merge_size=2,
                   temporal_patch_size=2, out_hidden_size=32, window_size=8, fullatt_block_indexes=[0])
        cfg = T.Qwen2_5_VLConfig(text_config=text, vision_config=vis, image_token_id=IMAGE_TOKEN, video_token_id=151,
                                 vision_start_token_id=152, vision_end_token_id=153)
        return T.Qwen2_5_VLForConditionalGeneration(cfg)
    if name == "instructblip":  # OPT language model, 4 query tokens = 4 image tokens
        qf = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=100,
                  encoder_hidden_size=32, max_position_embeddings=64)
        opt = T.OPTConfig(vocab_size=160, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                          word_embed_proj_dim=32, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                          eos_token_id=2, init_std=0.25)
        cfg = T.InstructBlipConfig(vision_config=VISION, qformer_config=qf, text_config=opt.to_dict(), num_query_tokens=4,
                                   image_token_index=IMAGE_TOKEN)
        return T.InstructBlipForConditionalGeneration(cfg)
    raise KeyError(name)


TEXT = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi", "opt", "gpt2", "gpt_neox", "falcon", "falcon_new",
        "phi3"]
VLM = ["llava", "qwen2_vl", "qwen2_5_vl", "instructblip"]
#: fused QKV: one kv_proj hook per layer
FUSED = {"gpt2", "gpt_neox", "falcon", "falcon_new", "phi3"}
#: attention rows cannot be captured: use a key scorer (none left: inline attention is read by core/inline.py)
NO_ROWS: set[str] = set()
#: attention computed inline: rows read by a pre- and a post-hook on each attention module (core/inline.py)
INLINE = {"falcon", "falcon_new"}


@functools.lru_cache(maxsize=None)
def build(name: str):
    torch.manual_seed(0)
    model = (_vlm if name in VLM else _text)(name).eval()
    return no_eos(model)


def vlm_inputs(name: str, model, batch: int = 1, text_len: int = 5, seed: int = 0) -> dict:
    """Prompt = 4 image tokens + ``text_len`` text tokens, with random pixel values."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, 100, (batch, text_len), generator=g)
    img = torch.full((batch, 4), IMAGE_TOKEN)
    if name in ("qwen2_vl", "qwen2_5_vl"):
        ids = torch.cat([torch.full((batch, 1), 152), img, torch.full((batch, 1), 153), text], 1)
        pixels = torch.randn(batch * 16, 3 * 2 * 4 * 4, generator=g)
        return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                    image_grid_thw=torch.tensor([[1, 4, 4]] * batch))
    ids = torch.cat([img, text], 1)
    out = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(batch, 3, 16, 16, generator=g))
    if name == "instructblip":
        out["qformer_input_ids"] = torch.randint(0, 100, (batch, 5), generator=g)
        out["qformer_attention_mask"] = torch.ones(batch, 5, dtype=torch.long)
    return out
