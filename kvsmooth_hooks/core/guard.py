"""Who drives a session's model, seen from the forward hooks: threads, generate calls and their kind.

A session serves **one generation at a time** (the rule of :mod:`kvsmooth_hooks.core.session`): the thread that runs
the current generation *owns* the session (:class:`Owner`); a forward or a ``generate`` call from another thread while
the owner is still generating raises :class:`SessionError` at once, and removing the session waits for the owner
(``Owner.wait_idle``). The owner is found by the session's ``generate`` wrapper when it is used, and otherwise by
the forward hooks themselves, from the Python stack (:func:`generation_roles`): that is how ``g = model.generate`` taken
before the session, a ``functools.partial`` of it or ``GenerationMixin.generate(model, ...)`` are seen too.
The per-step cost is one ``threading.get_ident()`` comparison; stacks are read only when a run starts, when the thread
changes, or for a forward of several tokens after decoding began.

Also here: module claims (one session per module: :func:`claim_modules`) and ``torch.compile`` wrappers
(:func:`unwrap_compiled`, :func:`forget_compiled_graphs`).
"""

from __future__ import annotations

import inspect
import sys
import threading
import time

from .errors import SessionError

#: GenerationMixin methods a forward can run under, and what each one means for the session
_ROLES = {"generate": "generate", "_sample": "loop", "_beam_search": "loop", "_assisted_decoding": "draft",
          "_prefill": "prefill"}
_CODES: dict | None = None


def _codes() -> dict:
    global _CODES
    if _CODES is None:
        try:
            from transformers.generation.utils import GenerationMixin
        except ImportError:  # pragma: no cover - transformers is a dependency; TransformerLens-only use still works
            GenerationMixin = None
        found = {}
        for name, role in _ROLES.items():
            fn = getattr(GenerationMixin, name, None)
            if fn is not None:
                found[inspect.unwrap(fn).__code__] = role
        _CODES = found
    return _CODES


def generation_roles(frame=None) -> set[str]:
    """Roles of the innermost ``GenerationMixin.generate`` call driving this forward: a subset of ``{"generate",
    "loop", "draft", "prefill"}`` (``draft``: assisted / prompt-lookup decoding; ``prefill``: its first forward),
    empty outside ``generate``. Stops at the first ``generate`` frame, so a model that runs as another model's
    assistant sees its own ``generate`` call only."""
    codes, roles = _codes(), set()
    f = frame or sys._getframe(1)
    while f is not None:
        role = codes.get(f.f_code)
        if role is not None:
            roles.add(role)
            if role == "generate":
                break
        f = f.f_back
    return roles


def _uses(frame, model, entry) -> bool:
    """Whether a thread whose innermost frame is ``frame`` is inside a ``generate`` call of ``model`` (or of a model
    holding it) or inside a forward of the session's ``entry`` module."""
    codes, entry_code = _codes(), getattr(type(entry).forward, "__code__", None)
    while frame is not None:
        code = frame.f_code
        if code is entry_code or codes.get(code) == "generate":
            owner = frame.f_locals.get("self")
            if owner is entry or owner is model or (code is not entry_code and owner is not None
                                                   and any(m is model for m in owner.modules())):
                return True
        frame = frame.f_back
    return False


class Owner:
    """The thread that drives a session now (``thread``), how many of the session's ``generate`` wrappers it is
    inside (``calls``), and a message that ends its generation when the session is removed under it (``ending``)."""

    def __init__(self, model, entry):
        self.model, self.entry = model, entry
        self.cond = threading.Condition(threading.Lock())
        self.thread: int | None = None
        self.calls = 0
        self.ending: str | None = None

    def busy(self, thread: int | None) -> bool:
        """Whether ``thread`` is still generating with (or forwarding through) the session's model."""
        if thread is None:
            return False
        if self.calls > 0:
            return True
        frame = sys._current_frames().get(thread)
        return frame is not None and _uses(frame, self.model, self.entry)

    def claim(self, how: str, call: bool = False) -> None:
        """Make the calling thread the owner; :class:`SessionError` if another thread is still generating.
        ``call``: a ``generate`` wrapper starts (released by :meth:`release`)."""
        me = threading.get_ident()
        with self.cond:
            if self.ending is not None:
                raise SessionError(self.ending)
            if self.thread != me:
                if self.busy(self.thread):
                    raise SessionError(
                        f"kvsmooth: {type(self.model).__name__} is already generating in thread {self.thread} and this "
                        f"{how} came from thread {threading.get_ident()}: a kvsmooth session serves one generation at a "
                        "time (its per-sequence state belongs to that generation). Serialise the calls (a lock or a "
                        "request queue) or batch the prompts into one generate call; see docs/serving.md"
                    )
                self.thread, self.calls = me, 0
            if call:
                self.calls += 1

    def release(self) -> None:
        """A ``generate`` wrapper of the owner returned (or raised)."""
        with self.cond:
            self.calls = max(0, self.calls - 1)
            self.cond.notify_all()

    def wait_idle(self, timeout: float | None, steps) -> str | None:
        """Called by ``remove()``: wait up to ``timeout`` seconds (None: no limit) for another thread's generation to
        finish; if it does not, make its next forward raise, saying how many decode steps (``steps()``) were smoothed.
        Returns a warning for the remover, or None when nothing ran."""
        me, start = threading.get_ident(), time.monotonic()
        with self.cond:
            thread = self.thread
            if thread in (None, me) or not self.busy(thread):  # a generate call that has not run a forward yet?
                thread = next((t for t, f in sys._current_frames().items()
                               if t != me and _uses(f, self.model, self.entry)), None)
                if thread is None:
                    return None
            deadline = None if timeout is None else start + timeout
            while self.busy(thread) and (deadline is None or time.monotonic() < deadline):
                self.cond.wait(0.02)
            waited = time.monotonic() - start
            if not self.busy(thread):
                return (f"kvsmooth: removing the session waited {waited:.1f} s for the generate call running in thread "
                        f"{thread}; to stream, keep the `with` block around the thread start, the streamer loop and "
                        "the join (docs/serving.md)")
            n = steps()
            self.thread = None  # the owner's next forward goes through claim(), which raises `ending`
            self.ending = (
                f"kvsmooth: the session was removed from thread {me} while this generation ran in thread {thread}; "
                f"after waiting {timeout} s (remove_timeout) it ended the generation: {n} of its decode steps were "
                "smoothed. Keep the `with` block around the whole generation (start the thread, read the streamer and "
                "join the thread inside it: docs/serving.md), or pass a longer remove_timeout"
            )
            grace = time.monotonic() + 10.0  # the forward in progress ends; the next one raises
            while self.busy(thread) and time.monotonic() < grace:
                self.cond.wait(0.02)
            self.ending = None
            return (f"kvsmooth: the generate call in thread {thread} was still running {timeout} s after the session's "
                    f"removal began (remove_timeout); the session ended it with a SessionError after {n} smoothed "
                    "decode steps")


#: attribute naming the session that smooths a module (the model, its decoder, its smoothed attention modules)
CLAIM = "_kvsmooth_claim"


def claim_modules(session, modules: list[tuple[str, object]]) -> None:
    """Mark ``modules`` (``(what, module)`` pairs) as ``session``'s; :class:`SessionError` naming the other session if
    one of them already belongs to an attached one (``smooth(model.model.language_model)`` while ``model`` is smoothed,
    or the reverse: two sessions would classify, score and edit the same forwards)."""
    for what, mod in modules:
        other = vars(mod).get(CLAIM)
        if other is not None and other is not session and other.attached:
            raise SessionError(
                f"kvsmooth: {what} ({type(mod).__name__}) of {type(session.model).__name__} is already smoothed by "
                f"{other!r}: a module can belong to one session. Remove that session first (leave its `with` block or "
                "call .remove()), or smooth only one of the two models"
            )
    for _, mod in modules:
        mod.__dict__[CLAIM] = session


def release_modules(session, modules: list[tuple[str, object]]) -> None:
    for _, mod in modules:
        if vars(mod).get(CLAIM) is session:
            del mod.__dict__[CLAIM]


def unwrap_compiled(model):
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) compiles: hooks go on its modules, and the
    wrapper's ``generate`` is the module's own (``OptimizedModule`` forwards attribute lookups to it)."""
    orig = getattr(model, "_orig_mod", None)
    if orig is not None and type(model).__name__ == "OptimizedModule":
        return unwrap_compiled(orig)
    return model


def forget_compiled_graphs(model, wrapped: bool) -> bool:
    """Drop torch.compile's graphs when a session's hooks change on a compiled model (``wrapped``: it came as an
    ``OptimizedModule``; also ``model.compile()`` or a compiled ``forward``). Dynamo does not guard on module hooks
    (``torch._dynamo.config.skip_nnmodule_hook_guards``): a graph traced before the session would run without its
    hooks, and one traced inside it would keep calling them after it. ``torch._dynamo.reset()`` is the only public
    way, so other compiled models recompile on their next call. Returns whether it reset."""
    try:
        import torch._dynamo as dynamo
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    except Exception:  # pragma: no cover - torch without dynamo
        return False
    code = getattr(type(model).forward, "__code__", None)
    try:
        traced = code is not None and bool(_debug_get_cache_entry_list(code))
    except Exception:  # pragma: no cover - a private API that moved
        traced = True
    if wrapped or traced or getattr(model, "_compiled_call_impl", None) is not None:
        dynamo.reset()
        return True
    return False
