"""Per-sequence runtime state of a session, in one object: :class:`GenerationState`.

It holds one :class:`LayerState` per smoothed layer (scorer state, newest score, kv_proj memory), the
coefficient groups (:mod:`kvsmooth_hooks.core.groups`: windows and coefficients), the padding mask and first
real position of each sequence, the decode-step counter and the trace cursor. A new generation calls
:meth:`GenerationState.reset`; beam search calls :meth:`GenerationState.reorder`; nothing else touches
per-sequence tensors. Shapes: ``B`` sequences, ``T`` positions, ``La`` layers of a group, ``H`` KV heads.
"""

from __future__ import annotations

import weakref

import torch

from .groups import CoefficientGroup, select_batch, build_groups
from .plan import SmoothingPlan
from .scorers import ScoreInputs, Scorer
from .smoothing import head_units
from .errors import SessionError
from .trace import Trace


def check_prompt_mask(valid: torch.Tensor) -> None:
    """Refuse prompts smoothing cannot serve: ``valid`` bool ``[B, T]`` (True = real token)."""
    empty = (~valid.any(-1)).nonzero().flatten().tolist()
    if empty:
        raise SessionError(
            f"kvsmooth: sequence(s) {empty} of the batch are padding only (their attention_mask rows are all 0); "
            "remove empty prompts from the batch"
        )
    if not bool(valid[:, -1].all()):
        raise SessionError(
            "kvsmooth: a prompt ends with padding (right padding); smoothing needs each prompt's last "
            "position to be real: set tokenizer.padding_side = 'left'"
        )


class LayerState:
    """One smoothed layer: its scorer (built once per session) and scorer state, the newest unit score,
    the kv_proj memory (last smoothed projection) and its place in a coefficient group."""

    def __init__(self, plan: SmoothingPlan, index: int, adapter, scorer: Scorer):
        self.index = index
        self.cache_index = adapter.cache_index(index)
        self.device = adapter.layer_device(index)  # per-sequence state lives here (device_map: the layer's device)
        self.attn = adapter.attention(index)
        self.scorer = scorer
        self.n_heads, self.n_kv, self.head_dim = adapter.layer_heads(index)
        self.per_head = plan.granularity == "head"
        self.head_reduce = plan.config.head_reduce  # mean (default), max, min, median over heads
        self.group: CoefficientGroup | None = None
        self.slot = 0  # position inside its group
        self.reset(0, None)

    def join(self, group: CoefficientGroup, slot: int) -> None:
        self.group, self.slot = group, slot

    def reset(self, batch: int, device) -> None:
        self.scorer_state = self.scorer.init_state(batch, self.n_heads, self.n_kv, device, layer=self.index) if batch else {}
        self.unit: torch.Tensor | None = None  # newest unit score [B, U]
        self.stash = None  # smooth_prefill at the cache site: a function giving prompt rows
        # kv_proj: last smoothed (or, with previous 'raw', raw) projection [B, Hkv, D]; cache site with previous 'raw':
        # the raw newest entry before its blend; attn_out: "out", the last attention output [B, hidden]
        self.prev = {"key": None, "value": None}
        self.pending = None  # kv_proj: this step's key blend (view, weight), waiting for the value hook
        self.prefill_lam: list[torch.Tensor] | None = None

    def reorder(self, idx: torch.Tensor) -> None:
        self.unit = select_batch(self.unit, idx)
        self.prev = {k: select_batch(v, idx) for k, v in self.prev.items()}
        self.scorer_state = {k: select_batch(v, idx) for k, v in self.scorer_state.items()}

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        """Scorer output reduced to the granularity's units: ``[B, U]`` float32; stored as :attr:`unit`."""
        raw = self.scorer.score(self.scorer_state, inputs)  # [B, Hq] or [B, Hkv]
        self.unit = head_units(raw, self.n_kv, self.per_head, self.scorer.head_axis, self.head_reduce)
        return self.unit


class GenerationState:
    """Everything that depends on the sequences being generated (see the module doc).

    Attributes: ``layers`` (``{layer index: LayerState}``), ``groups``, ``batch``, ``step`` (decode steps
    of this run), ``valid`` (bool ``[B, T]``, True = real token, over every position seen so far),
    ``first_index`` (``[B]`` long, first real position), ``cache`` (weak reference to the run's cache), ``trace``.
    """

    def __init__(self, plan: SmoothingPlan, adapter, scorers: dict[int, Scorer], trace: Trace, tracing: bool):
        self.plan = plan
        self.layers = {i: LayerState(plan, i, adapter, sc) for i, sc in scorers.items()}
        self.groups: list[CoefficientGroup] = []
        self.trace, self.tracing = trace, tracing
        self._trace_perm: torch.Tensor | None = None
        self.batch, self.step = 0, 0
        self.valid: torch.Tensor | None = None
        self.first_index: torch.Tensor | None = None
        self.cache = None
        self.mid_stream = False

    def build_groups(self, immediate) -> None:
        """Form the coefficient groups (``immediate(layer)``: the site needs it in the layer's own hook)."""
        self.groups = build_groups(self.plan, self.layers, immediate)
        order = [l.index for g in self.groups for l in g.layers]
        self._trace_perm = None if order == list(self.layers) else torch.tensor([order.index(i) for i in self.layers])

    def reset(self, cache, batch: int, valid: torch.Tensor, prompt_len: int, mid_stream: bool = False) -> None:
        """A new run: ``cache`` its cache object (kept as a weak reference); ``valid`` bool ``[B, T]`` over every position
        the cache holds after this forward; ``mid_stream``: the run starts at a decode step on a cache whose
        earlier positions the session never saw (a manual loop)."""
        try:
            self.cache = weakref.ref(cache)
        except TypeError:  # a cache type without weak references: held until the next run
            self.cache = lambda c=cache: c
        self.batch, self.step, self.mid_stream = batch, 0, mid_stream
        self.valid = valid
        self.first_index = valid.to(torch.int8).argmax(-1)
        for layer in self.layers.values():
            layer.reset(batch, layer.device or valid.device)
        for group in self.groups:
            group.reset(batch, group.layers[0].device or valid.device)
        if self.tracing:
            self.trace.begin_run(batch, prompt_len)

    def extend(self, mask: torch.Tensor | None, n: int) -> None:
        """``n`` more positions joined the run without a decode step (chunked prefill, a manual multi-token
        forward): ``mask`` bool ``[B, T]`` over every position (None: they are all real)."""
        if mask is None:
            mask = torch.cat([self.valid, self.valid.new_ones(self.batch, n)], 1)
        self.valid = mask.to(self.valid.device)
        self.first_index = self.valid.to(torch.int8).argmax(-1)

    def reorder(self, beam_idx: torch.Tensor) -> None:
        """Beam search reordered the cache: every per-sequence tensor follows."""
        for layer in self.layers.values():
            layer.reorder(beam_idx)
        for group in self.groups:
            group.reorder(beam_idx)
        self.first_index = select_batch(self.first_index, beam_idx)
        self.valid = select_batch(self.valid, beam_idx)
        if self.tracing:
            self.trace.reorder(beam_idx)

    def record(self) -> None:
        """Append this decode step's group records to the trace (in layer order)."""
        if not (self.tracing and self.layers):
            return
        names = ("score", "rank", "lambda", "dk", "dv")
        recs = [g.record for g in self.groups]
        out = {}
        for n in names:
            parts = [r[n] for r in recs if r is not None and n in r]
            if not parts or len(parts) != len(recs):
                continue
            t = parts[0] if len(parts) == 1 else torch.cat([p.to(parts[0].device) for p in parts], 1)  # device_map
            out[n] = t if self._trace_perm is None else t.index_select(1, self._trace_perm.to(t.device))
        self.trace.record(**out)
