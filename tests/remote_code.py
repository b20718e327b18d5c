"""Stand-ins for remote-code decoders (``trust_remote_code=True``), written here: a local folder with config.json,
``auto_map`` and its own configuration / modeling files, loaded the way a user loads InternVL or Qwen-VL.

* ``internlm2``: InternLM2's layout: one packed ``wqkv`` projection laid out per KV group as
  ``[q * (H / Hkv), k, v]`` (``b q (h gs d)``), rotary positions, ``repeat_kv`` and an inline
  ``scaled_dot_product_attention`` call; layers ``model.layers[i].attention``.
* ``qwenvl``: Qwen-VL's text decoder: one fused ``c_attn`` ``[q | k | v]``, attention written out
  (``matmul``, mask, ``softmax``); layers ``transformer.h[i].attn``.

Both keep a transformers :class:`~transformers.DynamicCache` unless ``legacy=True`` (then the model hands
tuples of ``(key, value)`` per layer back and forth, as pre-Cache remote code did). Five layers: the default
config (``layers: "3:-1"``) selects layer 3.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG = '''
from transformers import PretrainedConfig


class StandInConfig(PretrainedConfig):
    model_type = "{model_type}"

    def __init__(self, vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, legacy_cache=False, **kwargs):
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.num_attention_heads, self.num_key_value_heads = num_attention_heads, num_key_value_heads
        self.legacy_cache = legacy_cache
        super().__init__(**kwargs)
'''

COMMON = '''
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_standin import StandInConfig


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def rotary(x, pos):  # x [B, H, T, D], pos [B, T]
    d = x.shape[-1]
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = pos[:, None, :, None].float() * inv
    emb = torch.cat((ang, ang), -1)
    return x * emb.cos() + rotate_half(x) * emb.sin()


def causal_mask(attention_mask, q_len, past):  # bool [B, 1, Q, T], True = attend
    t = past + q_len
    allowed = torch.arange(t)[None, :] <= (torch.arange(q_len) + past)[:, None]
    m = allowed[None, None]
    if attention_mask is not None:
        m = m & attention_mask[:, None, None, -t:].bool()
    return m


class Layer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size)
        self.norm2 = nn.LayerNorm(config.hidden_size)
        setattr(self, ATTN, Attention(config, layer_idx))
        self.mlp = nn.Sequential(nn.Linear(config.hidden_size, 2 * config.hidden_size), nn.GELU(),
                                 nn.Linear(2 * config.hidden_size, config.hidden_size))

    def forward(self, x, mask, pos, past_key_value):
        a, past_key_value = getattr(self, ATTN)(self.norm1(x), mask, pos, past_key_value)
        x = x + a
        return x + self.mlp(self.norm2(x)), past_key_value


class Decoder(PreTrainedModel):
    config_class = StandInConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        setattr(self, LAYERS, nn.ModuleList(Layer(config, i) for i in range(config.num_hidden_layers)))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                inputs_embeds=None, **kwargs):
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        b, q = x.shape[:2]
        legacy = self.config.legacy_cache
        if legacy and not isinstance(past_key_values, tuple):  # pre-Cache code: anything else is "no cache yet"
            past_key_values = None
        if use_cache and past_key_values is None and not legacy:
            past_key_values = DynamicCache()
        if legacy:
            past = past_key_values[0][0].shape[-2] if past_key_values else 0
        else:
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + q)[None].expand(b, -1)
        mask = causal_mask(attention_mask, q, past)
        new = []
        for i, layer in enumerate(getattr(self, LAYERS)):
            layer_past = (past_key_values[i] if past_key_values else None) if legacy else past_key_values
            x, kv = layer(x, mask, position_ids, layer_past)
            new.append(kv)
        return self.norm(x), (tuple(new) if legacy and use_cache else past_key_values)


class ForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = StandInConfig

    def __init__(self, config):
        super().__init__(config)
        setattr(self, DECODER, Decoder(config))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                use_cache=None, inputs_embeds=None, logits_to_keep=0, **kwargs):
        past_key_values = cache if cache is not None else past_key_values  # generate passes `cache` (transformers 5)
        h, cache = getattr(self, DECODER)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                          past_key_values=past_key_values, use_cache=use_cache,
                                          inputs_embeds=inputs_embeds)
        return CausalLMOutputWithPast(logits=self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h),
                                      past_key_values=cache)
'''

INTERNLM2 = '''
ATTN, LAYERS, DECODER = "attention", "layers", "model"


def repeat_kv(x, n):
    return x if n == 1 else x[:, :, None].expand(-1, -1, n, -1, -1).flatten(1, 2)


class Attention(nn.Module):
    """InternLM2's attention: wqkv packed per KV group, inline scaled_dot_product_attention."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_key_value_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.wqkv = nn.Linear(config.hidden_size, (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim)
        self.wo = nn.Linear(self.num_heads * self.head_dim, config.hidden_size)

    def forward(self, hidden_states, mask, pos, past_key_value=None):
        b, q, _ = hidden_states.shape
        qkv = self.wqkv(hidden_states).view(b, q, self.num_key_value_heads, self.num_key_value_groups + 2, self.head_dim)
        query = qkv[..., : self.num_key_value_groups, :].flatten(2, 3).transpose(1, 2)
        key, value = qkv[..., -2, :].transpose(1, 2), qkv[..., -1, :].transpose(1, 2)
        query, key = rotary(query, pos), rotary(key, pos)
        if isinstance(past_key_value, tuple):
            key, value = torch.cat([past_key_value[0], key], 2), torch.cat([past_key_value[1], value], 2)
            past_key_value = (key, value)
        elif past_key_value is not None:
            key, value = past_key_value.update(key, value, self.layer_idx)
        elif self.config_legacy:
            past_key_value = (key, value)
        key, value = repeat_kv(key, self.num_key_value_groups), repeat_kv(value, self.num_key_value_groups)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(b, q, -1)), past_key_value
'''

QWENVL = '''
ATTN, LAYERS, DECODER = "attn", "h", "transformer"


class Attention(nn.Module):
    """Qwen-VL's attention: fused c_attn [q | k | v], attention written out with a softmax."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.split_size = config.hidden_size
        self.c_attn = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.c_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def _attn(self, query, key, value, mask):
        w = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_dim)
        w = w.masked_fill(~mask, torch.finfo(w.dtype).min)
        w = nn.functional.softmax(w, dim=-1)
        return torch.matmul(w, value)

    def forward(self, hidden_states, mask, pos, past_key_value=None):
        b, q, _ = hidden_states.shape
        query, key, value = self.c_attn(hidden_states).split(self.split_size, dim=2)
        query, key, value = (t.view(b, q, self.num_heads, self.head_dim).transpose(1, 2) for t in (query, key, value))
        query, key = rotary(query, pos), rotary(key, pos)
        if isinstance(past_key_value, tuple):
            key, value = torch.cat([past_key_value[0], key], 2), torch.cat([past_key_value[1], value], 2)
            past_key_value = (key, value)
        elif past_key_value is not None:
            key, value = past_key_value.update(key, value, self.layer_idx)
        elif self.config_legacy:
            past_key_value = (key, value)
        out = self._attn(query, key, value, mask)
        return self.c_proj(out.transpose(1, 2).reshape(b, q, -1)), past_key_value
'''

LAYOUTS = {"internlm2": INTERNLM2, "qwenvl": QWENVL}


def write(folder: Path, layout: str, legacy: bool = False) -> Path:
    """A loadable remote-code folder (config.json + auto_map + configuration_standin.py + modeling_standin.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    model_type = f"{layout}_standin"
    (folder / "configuration_standin.py").write_text(CONFIG.format(model_type=model_type))
    body = LAYOUTS[layout].replace("self.config_legacy", str(bool(legacy)))
    (folder / "modeling_standin.py").write_text(COMMON.replace("class Layer(", body + "\n\nclass Layer(", 1))
    kv = 2 if layout == "internlm2" else 4
    (folder / "config.json").write_text(json.dumps({
        "model_type": model_type, "architectures": ["ForCausalLM"], "vocab_size": 128, "hidden_size": 64,
        "num_hidden_layers": 5, "num_attention_heads": 4, "num_key_value_heads": kv, "legacy_cache": legacy,
        "auto_map": {"AutoConfig": "configuration_standin.StandInConfig",
                     "AutoModelForCausalLM": "modeling_standin.ForCausalLM"}}))
    return folder


def load(folder: Path, seed: int = 0):
    """The stand-in as a user loads remote code: ``from_config(..., trust_remote_code=True)`` from the folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True).eval()
    g = model.generation_config
    g.eos_token_id, g.pad_token_id = None, 0
    return model
