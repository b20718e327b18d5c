"""lmms-eval plugin: a ``kvsmooth`` model that wraps any lmms-eval model and smooths the model inside it.

Install with ``pip install "kvsmooth-hooks[lmms]"``; lmms-eval (0.7.x) finds the model through the entry-point group
``lmms_eval.models`` (this package declares ``kvsmooth = kvsmooth_hooks.integrations.lmms_eval:manifest``)::

    python -m lmms_eval --model kvsmooth \\
        --model_args base=llava_hf,pretrained=llava-hf/llava-1.5-7b-hf,config=llava.yaml --tasks pope

``model_args``: ``base`` (the lmms-eval model to wrap: ``llava_hf``, ``qwen2_vl``, ``instructblip``, ...),
``config`` (a KVSmooth config file) or ``preset`` (a preset name; default: the paper's config), and every other
argument goes to the base model unchanged. Generation requests run inside ``smooth(model, config)`` on the base
wrapper's underlying Hugging Face model; everything else (tasks, batching, ``accelerate launch`` data parallel,
logging) is lmms-eval's own. Log-likelihood requests are delegated unchanged (smoothing acts on decode steps).
"""

from __future__ import annotations

from typing import Any

__all__ = ["manifest", "KVSmoothLMM", "underlying_model"]

_OWN = ("base", "config", "preset")


def manifest():
    """The entry point lmms-eval loads: a ``ModelManifest`` for ``--model kvsmooth``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="kvsmooth", simple_class_path=f"{__name__}.KVSmoothLMM")


def underlying_model(wrapper) -> Any:
    """The Hugging Face model an lmms-eval wrapper generates with (unwrapped from DDP / accelerate)."""
    import torch

    for name in ("model", "_model", "llava_model", "pretrained_model"):
        m = getattr(wrapper, name, None)
        if isinstance(m, torch.nn.Module):
            while hasattr(m, "module") and isinstance(m.module, torch.nn.Module) and not hasattr(m, "generate"):
                m = m.module  # DistributedDataParallel
            return m
    raise TypeError(f"lmms-eval model {type(wrapper).__name__} has no torch module in .model/._model; "
                    "kvsmooth cannot find what to smooth")


def _lmms_base():
    from lmms_eval.api.model import lmms

    return lmms


def __getattr__(name):  # KVSmoothLMM is built on first use: importing this module does not need lmms-eval
    if name == "KVSmoothLMM":
        cls = _build_class()
        globals()["KVSmoothLMM"] = cls
        return cls
    raise AttributeError(name)


def _build_class():
    lmms = _lmms_base()

    class KVSmoothLMM(lmms):
        """``--model kvsmooth``: ``base``'s lmms-eval model, generating inside a KVSmooth session."""

        def __init__(self, base: str = "", config: str | None = None, preset: str | None = None, **kwargs):
            super().__init__()
            if not base:
                raise ValueError("--model kvsmooth needs model_args base=<lmms-eval model>, e.g. base=llava_hf")
            if base == "kvsmooth":
                raise ValueError("model_args base=kvsmooth would wrap itself; name the model to smooth (e.g. llava_hf)")
            from lmms_eval.models import get_model

            from ..core.config import KVSmoothConfig

            cfg = KVSmoothConfig.from_source(config, preset)
            inner = get_model(base)(**kwargs)
            for key in list(self.__dict__):  # lmms.__init__'s own task_dict etc.: the base model's are the real ones
                del self.__dict__[key]
            self.inner = inner
            self.is_simple = inner.is_simple
            self.hf_model = underlying_model(inner)
            self.kvsmooth_config, self.base_name = cfg, base

        _own = frozenset({"inner", "kvsmooth_config", "base_name", "is_simple", "hf_model"})

        def __getattr__(self, name):  # everything not defined here is the base model's
            if name == "inner":
                raise AttributeError(name)
            return getattr(self.inner, name)

        def __setattr__(self, name, value):  # what lmms-eval sets on the model (task_dict, ...) goes to the base
            if "inner" in self.__dict__ and name not in self._own:
                setattr(self.inner, name, value)
            else:
                object.__setattr__(self, name, value)

        @property
        def rank(self):
            return self.inner.rank

        @property
        def world_size(self):
            return self.inner.world_size

        def _smoothed(self, method: str, requests):
            from .. import smooth

            with smooth(self.hf_model, self.kvsmooth_config, trace=False):
                return getattr(self.inner, method)(requests)

        def generate_until(self, requests):
            return self._smoothed("generate_until", requests)

        def generate_until_multi_round(self, requests):
            return self._smoothed("generate_until_multi_round", requests)

        def loglikelihood(self, requests):
            return self.inner.loglikelihood(requests)

        def set_cache_hook(self, cache_hook) -> None:
            self.inner.set_cache_hook(cache_hook)

    KVSmoothLMM.__module__ = __name__
    KVSmoothLMM.__qualname__ = "KVSmoothLMM"
    return KVSmoothLMM
