"""kvsmooth_hooks: KV-cache smoothing (KVSmooth, CVPR 2026) as forward hooks on Hugging Face decoders.

Shortest path::

    from kvsmooth_hooks import KVSmoothConfig, smooth
    with smooth(model, KVSmoothConfig(lambda_ref=0.9)) as session:
        out = model.generate(**inputs, max_new_tokens=128)
    session.trace.summary()
"""

from ._version import __version__  # noqa: E402

from .core.config import PRESETS, ConfigError, KVSmoothConfig, Override, ScorerSpec  # noqa: E402
from .core.plan import PlanError, SmoothingPlan, resolve  # noqa: E402
from .core.session import Session, SessionError, attach, smooth  # noqa: E402
from .core.trace import Trace  # noqa: E402
from .core.adapters import UnsupportedModelError, get_adapter  # noqa: E402

__all__ = [
    "KVSmoothConfig",
    "Override",
    "ScorerSpec",
    "PRESETS",
    "ConfigError",
    "PlanError",
    "SmoothingPlan",
    "resolve",
    "Session",
    "SessionError",
    "smooth",
    "attach",
    "Trace",
    "UnsupportedModelError",
    "get_adapter",
    "__version__",
]
