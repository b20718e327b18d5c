"""adapters/order.py: when the kv_proj site may blend a layer's key in its value hook (one op per layer)."""

import importlib

import pytest
import torch
from torch import nn

from kvsmooth_hooks.core.adapters.order import key_untouched_until_value


@pytest.mark.parametrize("family,cls,expected", [
    ("llama", "LlamaAttention", True),
    ("mistral", "MistralAttention", True),
    ("qwen2", "Qwen2Attention", True),
    ("gemma3", "Gemma3Attention", True),       # k_norm runs after the value projection
    ("qwen3", "Qwen3Attention", False),        # self.k_norm(self.k_proj(x)...) before v_proj
    ("olmo2", "Olmo2Attention", False),
    ("gemma3n", "Gemma3nTextAttention", False),  # projections inside a branch (shared-KV layers)
])
def test_transformers_attention_classes(family, cls, expected):
    mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    assert key_untouched_until_value(getattr(mod, cls), "k_proj", "v_proj") is expected


class _Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.k_proj, self.v_proj, self.k_norm = nn.Linear(4, 4), nn.Linear(4, 4), nn.LayerNorm(4)


class Plain(_Base):
    def forward(self, x):
        k = self.k_proj(x).view(1, -1, 2, 2).transpose(1, 2)
        v = self.v_proj(x).view(1, -1, 2, 2).transpose(1, 2)
        return k + v


class ReadInBetween(_Base):
    def forward(self, x):
        k = self.k_proj(x).view(1, -1, 2, 2)
        scale = k.abs().mean()
        v = self.v_proj(x)
        return k * scale, v


class NormFirst(_Base):
    def forward(self, x):
        k = self.k_norm(self.k_proj(x))
        v = self.v_proj(x)
        return k, v


class Copies(_Base):
    def forward(self, x):
        k = self.k_proj(x).transpose(0, 1).contiguous()  # a copy: an in-place edit of the output would not reach k
        v = self.v_proj(x)
        return k, v


class ReshapeAfterTranspose(_Base):
    def forward(self, x):
        k = self.k_proj(x).transpose(0, 1).reshape(-1)  # may copy
        v = self.v_proj(x)
        return k, v


class ValueFirst(_Base):
    def forward(self, x):
        v = self.v_proj(x)
        k = self.k_proj(x)
        return k, v


class InValueStatement(_Base):
    def forward(self, x):
        k = self.k_proj(x)
        v = self.v_proj(x) + k
        return k, v


class Branch(_Base):
    def forward(self, x, shared=None):
        if shared is None:
            k = self.k_proj(x)
        v = self.v_proj(x)
        return k, v


@pytest.mark.parametrize("cls,expected", [(Plain, True), (ReadInBetween, False), (NormFirst, False), (Copies, False),
                                          (ReshapeAfterTranspose, False), (ValueFirst, False),
                                          (InValueStatement, False), (Branch, False)])
def test_rules(cls, expected):
    assert key_untouched_until_value(cls, "k_proj", "v_proj") is expected


def test_unreadable_source_is_not_deferred():
    ns = {}
    exec("import torch.nn as nn\nclass Dyn(nn.Module):\n def forward(self, x):\n  return self.k_proj(x), self.v_proj(x)\n", ns)
    assert key_untouched_until_value(ns["Dyn"], "k_proj", "v_proj") is False
    assert key_untouched_until_value(torch.nn.Linear, "k_proj", "v_proj") is False
