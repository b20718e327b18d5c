"""The site interface and registry: *where* smoothing rewrites keys and values.

A site is one file with one :class:`Site` subclass, registered by name with :func:`register_site`
(like scorers). The session classifies every forward and calls the site's four methods; a site never
looks at another site, and the session never asks which site it runs:

============================  ==========================================================================
``register()``                add this site's hooks (through the adapter), return their handles
``begin(kind, info)``         at the start of a forward (``PREFILL``, ``DECODE`` or ``EXTEND``), after the
                              generation state was reset for a new run
``on_row(layer, kind, rows)`` an attention row of ``layer`` is available during this forward
                              (``rows(rows=slice(-1, None))`` returns float32 ``[B, Hq, R, T]``)
``end(kind)``                 when the forward is done (edits that need every layer's new entry)
============================  ==========================================================================

Class attributes: ``name``; ``immediate(layer)`` says whether a layer's coefficient is needed inside its
own hook (it then gets a coefficient group of its own); ``check(config, needs_row)`` refuses a config
the site cannot serve before any hook is registered.

Kinds of forward: ``PREFILL`` (first forward of a run: the prompt, or a continued cache's new tokens),
``DECODE`` (one new token per sequence; also the first forward of a run that a manual loop starts on an
existing cache: then ``state.mid_stream`` is True and ``state.step`` 0), ``EXTEND`` (several new tokens on a running generation
outside ``generate``: not smoothed, the state only follows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar

from ..errors import SessionError
from ..registry import SITES, registrar

if TYPE_CHECKING:  # pragma: no cover
    from ..adapters import ForwardInfo
    from ..state import LayerState

PREFILL, DECODE, EXTEND = "prefill", "decode", "extend"

#: the registry (``kvsmooth_hooks.core.registry.SITES``): name -> Site class


class SiteError(SessionError):
    """A site cannot serve this config or this model."""


register_site = registrar(SITES, "site")


class Site:
    """Base class. ``session`` gives access to ``adapter``, ``plan``, ``config``, ``state``
    (:class:`~kvsmooth_hooks.core.state.GenerationState`) and the session options (``record_deltas``)."""

    name: ClassVar[str] = "?"

    def __init__(self, session):
        self.session = session
        self.adapter = session.adapter
        self.config = session.config
        self.state = session.state

    @classmethod
    def check(cls, config, needs_row: bool) -> None:
        """Raise :class:`SiteError` if this site cannot run ``config``."""

    def immediate(self, layer: "LayerState") -> bool:
        """True if ``layer``'s coefficient must be computed inside its own hook."""
        return False

    def register(self) -> list:
        """Register this site's hooks; return their handles (the session removes them)."""
        raise NotImplementedError

    def begin(self, kind: str, info: "ForwardInfo") -> None:
        """A forward of ``kind`` starts."""

    def on_row(self, layer: "LayerState", kind: str, row_fn: Callable) -> None:
        """``layer``'s attention ran in a forward of ``kind``; ``row_fn(rows=slice(-1, None))`` gives the rows."""

    def end(self, kind: str) -> None:
        """A forward of ``kind`` is done."""


def build_site(name: str, session) -> Site:
    """The registered site ``name`` bound to ``session``."""
    if name not in SITES:
        raise SiteError(f"unknown site '{name}'; registered sites: {sorted(SITES)}")
    return SITES[name](session)
