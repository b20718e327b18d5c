"""Structure discovery as pure functions over hand-built modules (no transformers model, no forward pass)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kvsmooth_hooks.core.adapters.discover import classify_layer, discover, find_decoder
from kvsmooth_hooks.core.adapters.generic import named_arguments, takes_cache
from kvsmooth_hooks.core.adapters.heads import HeadLayout, head_layout, kv_slots
from kvsmooth_hooks.core.adapters.runtime import UnsupportedModelError


class SepAttention(nn.Module):
    def __init__(self, h=4, kv=2, d=8, layer_idx=0):
        super().__init__()
        self.num_heads, self.num_key_value_groups, self.head_dim, self.layer_idx = h, h // kv, d, layer_idx
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(32, h * d), nn.Linear(32, kv * d), nn.Linear(32, kv * d)

    def forward(self, hidden_states, cache=None):
        return hidden_states


class FusedAttention(nn.Module):
    def __init__(self, name, width, h=4, d=8):
        super().__init__()
        self.num_heads, self.head_dim = h, d
        setattr(self, name, nn.Linear(32, width))


class MambaMixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.in_proj = nn.Linear(32, 64)


class Block(nn.Module):
    def __init__(self, attn=None, mixer=None, cross=None):
        super().__init__()
        if attn is not None:
            self.self_attn = attn
        if mixer is not None:
            self.mixer = mixer
        if cross is not None:
            self.cross_attn = cross


class Decoder(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.layers = nn.ModuleList(blocks)


class Wrapper(nn.Module):  # a VLM-like wrapper: a vision tower with its own attention layers, then the decoder
    def __init__(self, blocks):
        super().__init__()
        self.vision_tower = Decoder([Block(SepAttention()) for _ in range(3)])
        self.language_model = Decoder(blocks)


def test_language_decoder_is_found_past_a_vision_tower_and_layer_kinds_keep_their_index():
    model = Wrapper([Block(mixer=MambaMixer()), Block(SepAttention(layer_idx=1)), Block(cross=SepAttention()),
                     Block(SepAttention(layer_idx=1))])
    path, dec, attr, layers = find_decoder(model)
    assert (path, attr, dec) == ("language_model", "layers", model.language_model)
    s = discover(model)
    assert [(l.index, l.kind) for l in s.layers] == [(0, "MambaMixer"), (1, "attention"), (2, "cross_attention"),
                                                    (3, "shared_kv")]
    assert s.layers[3].reads == 1  # writes the cache entry layer 1 owns: smoothed once, through layer 1
    assert s.attention_layers() == [1]


def test_no_attention_anywhere_names_the_mixers():
    model = Decoder([Block(mixer=MambaMixer()) for _ in range(2)])
    with pytest.raises(UnsupportedModelError, match=r"no self-attention layer .*\['MambaMixer'\]"):
        discover(model)


def test_heads_are_read_from_the_module():
    assert head_layout(SepAttention(h=8, kv=2, d=16)) == HeadLayout(8, 2, 16, 16)


@pytest.mark.parametrize("name,width,kind", [("qkv_proj", 4 * 8 + 2 * 2 * 8, "contiguous"),
                                             ("query_key_value", 3 * 4 * 8, "interleaved")])
def test_fused_slots_select_the_key_and_value_parts(name, width, kind):
    kv = 2 if kind == "contiguous" else 4
    attn = FusedAttention(name, width)
    k, v = kv_slots(attn, HeadLayout(4, kv, 8, 8))
    out = torch.arange(width, dtype=torch.float32).expand(1, 1, width)
    keys, values = k.heads(out, kv, 8), v.heads(out, kv, 8)
    if kind == "contiguous":  # [q (32) | k (16) | v (16)]
        assert keys.flatten().tolist() == list(range(32, 48)) and values.flatten().tolist() == list(range(48, 64))
    else:  # per head [q_h, k_h, v_h]
        assert keys[0, 0, 1].tolist() == list(range(24 + 8, 24 + 16))
        assert values[0, 0, 0].tolist() == list(range(16, 24))


def test_fused_width_mismatch_is_a_clear_error():
    with pytest.raises(UnsupportedModelError, match="width 40 does not match 4 query \\+ 2 KV heads"):
        kv_slots(FusedAttention("qkv_proj", 40), HeadLayout(4, 2, 8, 8))


def test_positional_cache_arguments_are_found_by_name():
    attn = SepAttention()
    cache = object()
    assert named_arguments(attn, (torch.zeros(1), cache), {})["cache"] is cache
    assert takes_cache(attn) and not takes_cache(MambaMixer())


def test_classify_layer_without_attention_or_cross_only():
    assert classify_layer(0, Block(mixer=MambaMixer())).kind == "MambaMixer"
    assert classify_layer(0, Block(cross=SepAttention())).kind == "cross_attention"
