"""RowBatch: decode-step attention rows of several layers, normalised together, equal the per-layer rows."""

from types import SimpleNamespace

import pytest
import torch

from kvsmooth_hooks.core.probe import query_probs
from kvsmooth_hooks.core.rowbatch import RowBatch


class Attn(torch.nn.Module):
    """Stand-in attention module (the batch keys slots by module identity)."""


def _batch(mods):
    return RowBatch([SimpleNamespace(attn=m) for m in mods], [])


def _inputs(b=2, hq=4, hkv=2, t=7, d=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, 1, d, generator=g).to(dtype)
    k = torch.randn(b, hkv, t, d, generator=g).to(dtype)
    return q, k


def _masks(b=2, t=7):
    pad = torch.ones(b, t, dtype=torch.bool)
    pad[0, :3] = False  # left padding of sequence 0
    bool4 = pad[:, None, None, :]
    float4 = torch.zeros(b, 1, 1, t).masked_fill(~bool4, torch.finfo(torch.float32).min)
    return {"none": None, "bool4d": bool4, "additive4d": float4, "padding2d": pad.long()}


@pytest.mark.parametrize("kind", ["none", "bool4d", "additive4d", "padding2d"])
def test_batched_rows_equal_per_layer_rows(kind):
    mask = _masks()[kind]
    mods = [Attn() for _ in range(3)]
    rows = _batch(mods)
    expected = []
    for i, m in enumerate(mods):
        q, k = _inputs(seed=i)
        kwargs = {"scaling": 0.3 + 0.1 * i}
        assert rows.write(m, q, k, mask, kwargs)
        expected.append(query_probs(m, q, k, mask, kwargs)[:, :, -1])
    assert rows.complete()
    probs = rows.probs()
    assert probs.shape == (3, 2, 4, 7) and probs.dtype == torch.float32
    for i in range(3):
        torch.testing.assert_close(probs[i], expected[i], atol=1e-6, rtol=1e-5)
    if kind != "none":
        assert probs[:, 0, :, :3].abs().max() == 0  # padding gets no probability


def test_layer_with_its_own_mask_and_bf16():
    """A layer whose mask differs from the first layer's (sliding window) is masked at write time; bf16
    logits are normalised in float32."""
    masks = _masks()
    mods = [Attn(), Attn()]
    rows = _batch(mods)
    window = masks["bool4d"].clone()
    window[..., :5] = False  # layer 1 only sees the last two positions
    expected = []
    for m, mask in zip(mods, (masks["bool4d"], window)):
        q, k = _inputs(dtype=torch.bfloat16)
        assert rows.write(m, q, k, mask, {})
        expected.append(query_probs(m, q, k, mask, {})[:, :, -1])
    probs = rows.probs()
    for i in range(2):
        torch.testing.assert_close(probs[i], expected[i], atol=2e-2, rtol=2e-2)  # bf16 logits
    assert probs[1, :, :, :5].abs().max() == 0


def test_unbatchable_calls_are_refused():
    m, other = Attn(), Attn()
    rows = _batch([m, other])
    q, k = _inputs()
    assert not rows.write(Attn(), q, k, None, {})  # module without a slot
    assert not rows.write(m, q, k, None, {"softcap": 30.0})
    assert not rows.write(m, q, k, None, {"s_aux": torch.zeros(4)})
    assert not rows.write(m, torch.cat((q, q), 2), k, None, {})  # two new queries: not a decode step
    assert rows.write(m, q, k, None, {})
    q2, k2 = _inputs(t=5)
    assert not rows.write(other, q2, k2, None, {})  # other key length than the first layer
    assert rows.filled == [True, False] and not rows.complete()
