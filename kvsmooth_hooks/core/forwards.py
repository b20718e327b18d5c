"""Forward classification and dispatch of a session: the mixin :class:`Forwards` of
:class:`~kvsmooth_hooks.core.session.Session`.

At the entry module's pre-hook each forward is classified (``PREFILL``: the first forward of a run; ``DECODE``: one
new token; ``EXTEND``: several tokens outside ``generate``, never smoothed) and a new run starts when ``generate`` was
just called, when the cache object is not the run's, or when it is empty. A forward from a thread other than the
session's owner goes through :meth:`~kvsmooth_hooks.core.guard.Owner.claim` first (one id comparison otherwise).
The exit module's hook ends the forward; attention rows reach the site through the probe listeners or the adapter's
row modules.
"""

from __future__ import annotations

import threading

import torch

from .errors import SessionError
from .guard import generation_roles
from .modes import CONTINUOUS, DRAFT
from .probe import query_probs
from .sites import DECODE, EXTEND, PREFILL
from .state import check_prompt_mask

_ident = threading.get_ident


class Forwards:
    """Mixin: the hooks' side of a session (it reads ``adapter``, ``config``, ``state``, ``site``, ``owner``, ``rows``,
    ``probe`` and sets ``kind`` / ``total``)."""

    # ------------------------------------------------------------------ forwards
    def _pre_forward(self, module, args, kwargs):
        if _ident() != self.owner.thread:  # another thread: raises while the owner is generating (one id check a step)
            self.owner.claim("forward")
        self.kind = None
        try:
            info = self.adapter.forward_info(args, kwargs, self._known_past)
        except AttributeError:
            if any(type(kwargs.get(k)).__name__ == "PagedAttentionCache" for k in ("cache", "past_key_values")):
                raise SessionError(CONTINUOUS) from None
            raise
        if info is None:
            return None
        if self.probe is not None and not self.probe.active():
            raise SessionError(
                "kvsmooth: the model's attention implementation was changed (set_attn_implementation) while a session "
                "is attached; the session reads attention rows through its own implementation. Remove the session, "
                "change the implementation, then attach again"
            )
        st = self.state
        current = st.cache() if st.cache is not None else None
        if self.fresh_generate or current is not info.cache or info.past == 0:
            kind = self._new_run(info)
        elif info.batch != st.batch:
            raise SessionError(
                f"kvsmooth: the batch changed from {st.batch} to {info.batch} sequences on the same cache in the middle "
                "of a generation; this generation mode reshapes the cache: use greedy, sampling or beam search"
            )
        elif info.q_len == 1:
            kind = DECODE
        elif st.step > 0 and self._new_call(info):  # raises for draft verification
            kind = self._new_run(info)
        else:  # more prompt (chunked prefill) or a manual loop feeding several tokens: not smoothed, the state follows
            if self.config.smooth_prefill:
                raise SessionError("kvsmooth: smooth_prefill needs the whole prompt in one forward; this one adds "
                                   f"{info.q_len} tokens to a cache of {info.past} (chunked prefill?): set "
                                   "prefill_chunk_size=None or smooth_prefill: false")
            if self.owner.calls and not self.prefill_chunks:
                raise SessionError(
                    f"kvsmooth: generate() fed {info.q_len} tokens to a cache of {info.past} after the prompt without "
                    "chunked prefill: this model feeds its whole sequence again at every step (XLM's generate does), "
                    "so no forward adds one token to the cache and nothing could be smoothed. KVSmooth needs a model "
                    "whose generate adds one token per forward")
            kind = EXTEND
            st.extend(info.mask, info.q_len)
        if kind == DECODE and st.step == 0:
            check_prompt_mask(st.valid)  # the whole prompt is known now (also after a chunked prefill)
        self.kind, self.total = kind, info.past + info.q_len
        self.site.begin(kind, info)
        return None

    def _new_call(self, info) -> bool:
        """A forward of several tokens after decoding began: a new ``generate`` call continuing this cache through an
        entry point without the wrapper (True), a manual loop adding tokens (False), or draft verification (raises)."""
        roles = generation_roles()
        if not roles and not self.owner.calls:
            return False
        if "prefill" in roles and "draft" not in roles:
            return True
        raise SessionError(f"kvsmooth: generate() ran a forward of {info.q_len} new tokens after decoding began "
                           f"(assisted, prompt-lookup or speculative decoding): {DRAFT}")

    def _new_run(self, info) -> str:
        total = info.past + info.q_len
        if total == 0:
            raise SessionError("kvsmooth: the prompt is empty (input_ids with 0 tokens): give each sequence at least one "
                               "token (e.g. the tokenizer's BOS token)")
        roles = generation_roles()  # the stack, once a run: whatever entry point started generate
        if "draft" in roles:
            raise SessionError("kvsmooth: generate() runs assisted, prompt-lookup or self-speculative decoding, which "
                               f"is not supported inside a session: {DRAFT}")
        generating = bool(self.owner.calls or roles)
        valid = info.mask if info.mask is not None else torch.ones(info.batch, total, dtype=torch.bool)
        valid = valid.to(info.device)
        self.fresh_generate = False
        # a manual loop that continues a cache: this token is a decode step; inside generate() the first forward
        # holds the rest of the prompt, which is never smoothed
        kind = DECODE if info.past > 0 and info.q_len == 1 and not generating else PREFILL
        self.state.reset(info.cache, info.batch, valid, prompt_len=total, mid_stream=kind == DECODE)
        if self._undo_reorder is not None:
            self._undo_reorder()
        self._undo_reorder = self.adapter.watch_reorder(info.cache, self._on_reorder)
        return kind

    def _known_past(self, cache) -> int | None:
        """Inside generate() a static cache grows by each forward's tokens: its length without a host sync."""
        st = self.state
        return self.total if self.owner.calls and not self.fresh_generate and st.cache and st.cache() is cache else None

    def _on_reorder(self, beam_idx: torch.Tensor) -> None:
        if self.attached:
            self.state.reorder(beam_idx)

    def _post_forward(self, module, args, output):
        kind, self.kind = self.kind, None
        if kind is None:
            return None
        if kind == DECODE and self.rows is not None:  # every batched layer's score, before the site's step
            self.rows.score(self.state.first_index)
        self.site.end(kind)
        if kind == DECODE:
            self.state.record()
            self.state.step += 1
        return None

    # ------------------------------------------------------------------ attention rows
    def _row_listener(self, layer):
        def listener(module, query, key, mask, kwargs, weights):
            kind = self.kind
            if kind is None or (kind == DECODE and weights is None and self.rows is not None
                                and self.rows.write(module, query, key, mask, kwargs)):  # scored at the end
                return

            def rows(rows=slice(-1, None)):  # [..., :total]: a static cache also holds unwritten positions
                p = query_probs(module, query, key, mask, kwargs, rows=rows) if weights is None else weights[:, :, rows]
                return p.float()[..., : self.total]

            self.site.on_row(layer, kind, rows)

        return listener

    def _pattern_hook(self, layer):
        def hook(module, args, pattern):  # [B, Hq, Q, T]
            if self.kind is not None:
                self.site.on_row(layer, self.kind, lambda rows=slice(-1, None): pattern[:, :, rows].float())

        return hook
