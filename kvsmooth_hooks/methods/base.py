"""What an inference-time method is, and the per-call plumbing every method shares.

A method is one small dataclass in one file, registered with :func:`~kvsmooth_hooks.methods.registry.register_method`
(or through the entry-point group ``kvsmooth_hooks.methods``). Its fields are its parameters (with the authors' defaults);
it is applied to *one* ``generate`` call, because most methods need that call's inputs (the image to
distort, the image-token positions, the text-only prompt)::

    vcd = VCD(alpha=1.0)
    out = vcd.generate(model, **inputs, max_new_tokens=64)      # or:
    with vcd(model, inputs):                                     # hooks registered here, removed on exit
        out = model.generate(**inputs, max_new_tokens=64)

``model`` is any Hugging Face causal LM or vision-language model the package supports. Nothing in
transformers is patched: methods register forward hooks and, where they must change attention, a scoped
attention implementation (as the KVSmooth probe does); all of it is undone on exit, also when generation raises.

A method that needs extra forwards (VCD's distorted image, PAI's text-only prompt) runs them through
:meth:`Call.aux_forward`, with their own cache, hidden from an attached KVSmooth session (which therefore
smooths only the main forward) and from the method's own hooks.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from ..core.errors import UserError

__all__ = ["Method", "Call", "MethodError", "lm_module", "image_token_ids", "frame_token_ids", "forward_inputs"]


class MethodError(UserError):
    """A method cannot serve this model, input or generation mode; the message names what and the fix."""


def lm_module(model) -> torch.nn.Module:
    """The module whose forward runs once per generation step and returns ``.logits``: the model itself, or
    its ``language_model`` where the model's own ``generate`` hands the merged embeddings to it (InstructBLIP,
    BLIP-2)."""
    inner = getattr(model, "language_model", None)
    if inner is not None and callable(getattr(inner, "get_output_embeddings", None)) \
            and inner.get_output_embeddings() is not None:
        return inner
    return model


def image_token_ids(model) -> list[int]:
    """Ids that mark image positions in ``input_ids``: the image token and, if the model has them, the
    vision start/end tokens that frame it (Qwen2-VL). Empty for text-only models."""
    cfg = model.config
    ids = []
    for name in ("image_token_id", "image_token_index"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v not in ids:
            ids.append(v)
    return ids


def frame_token_ids(model) -> list[int]:
    cfg = model.config
    return [v for v in (getattr(cfg, "vision_start_token_id", None), getattr(cfg, "vision_end_token_id", None))
            if isinstance(v, int)]


def forward_inputs(kwargs: dict) -> dict:
    """The model inputs among ``generate`` keyword arguments: every tensor (input_ids, attention_mask,
    pixel_values, image_grid_thw, qformer_input_ids, ...)."""
    return {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}


def _sessions(model) -> list:
    """KVSmooth sessions attached to ``model`` or any of its submodules (a session may hook the inner LM)."""
    found = []
    for m in model.modules():
        s = vars(m).get("_kvsmooth_session")
        if s is not None and s not in found:
            found.append(s)
    return found


class Call:
    """One ``generate`` call under one method: the model, its inputs, the step counter and the undo stack.

    ``inputs``: the call's model inputs (tensors only); ``lm``: :func:`lm_module`; ``step``: the number of
    main forwards seen so far (0 = the prefill); ``aux``: True while an auxiliary forward runs; ``info``: what
    the method reports about the call (e.g. DoLa's chosen premature layers).
    """

    def __init__(self, model, inputs: dict, stack: contextlib.ExitStack):
        self.model, self.inputs, self.stack = model, forward_inputs(inputs), stack
        self.lm = lm_module(model)
        self.step, self.aux = 0, False
        self.info: dict = {}

    def on_logits(self, fn: Callable[[dict, torch.Tensor], torch.Tensor]) -> None:
        """After each main forward of :attr:`lm`: ``fn(forward kwargs, last-position logits [B, V] float32)``
        returns the logits generation uses instead (``[B, V]``). Auxiliary forwards are not seen."""

        def hook(module, args, kwargs, output):
            if self.aux:
                return None
            logits = output.logits
            new = fn(kwargs, logits[:, -1, :].float())
            full = logits.float()  # generation reads position -1 in float32; keep it exact
            full[:, -1, :] = new
            output.logits = full
            self.step += 1
            return output

        self.stack.callback(self.lm.register_forward_hook(hook, with_kwargs=True).remove)

    def aux_forward(self, module, **kwargs):
        """``module(**kwargs)`` as an auxiliary forward: the method's hooks pass, an attached KVSmooth session
        does not see it, and per-model state a VLM keeps between forwards (``rope_deltas``) is restored."""
        saved = [(m, m.rope_deltas) for m in self.model.modules() if hasattr(m, "rope_deltas")]
        hidden = []
        for s in _sessions(self.model):
            had = "forward_info" in vars(s.adapter)
            hidden.append((s.adapter, had, vars(s.adapter).get("forward_info")))
            s.adapter.forward_info = _not_seen
        self.aux = True
        try:
            with torch.no_grad():
                return module(**kwargs)
        finally:
            self.aux = False
            for adapter, had, fn in hidden:
                if had:
                    adapter.forward_info = fn
                else:
                    del adapter.forward_info
            for m, v in saved:
                m.rope_deltas = v


def _not_seen(*args, **kwargs):
    return None  # the session ignores forwards without forward info


@dataclass
class Method:
    """Base class: subclasses are dataclasses whose fields are the method's parameters.

    Class attributes: ``name`` (registry key), ``needs_image`` (refuses calls without image inputs),
    ``aux_cache`` (keeps a second cache in step with the main one: refuses beam search and several
    sequences per prompt), ``source`` (the reference implementation it follows).
    """

    name: ClassVar[str] = ""
    needs_image: ClassVar[bool] = False
    aux_cache: ClassVar[bool] = False
    #: False for methods that replace attention rows (they cannot run inside a KVSmooth session's probe)
    composes_with_kvsmooth: ClassVar[bool] = True
    source: ClassVar[str] = ""

    def settings(self) -> dict:
        """The parameters, for a run's recorded settings."""
        return {"method": self.name, **dataclasses.asdict(self)}

    def install(self, call: Call) -> None:
        """Register hooks for one call (push their removal on ``call.stack``)."""
        raise NotImplementedError

    def check(self, model, inputs: dict, gen_kwargs: dict) -> None:
        """Raise :class:`MethodError` for what this method cannot serve."""
        if self.needs_image and not image_token_ids(model):
            raise MethodError(f"{self.name}: {type(model).__name__} is a text-only model (its config has no "
                              "image_token_id); this method contrasts image conditions and needs a vision-language "
                              "model")
        if self.needs_image and not any(k in inputs for k in ("pixel_values", "pixel_values_videos")):
            raise MethodError(f"{self.name}: the generate call has no pixel_values; pass the processor's image "
                              "inputs (this method needs the image)")
        if self.aux_cache:
            beams = gen_kwargs.get("num_beams") or getattr(model.generation_config, "num_beams", 1) or 1
            ret = gen_kwargs.get("num_return_sequences") or \
                getattr(model.generation_config, "num_return_sequences", 1) or 1
            if beams > 1 or ret > 1:
                raise MethodError(f"{self.name}: num_beams={beams}, num_return_sequences={ret}: this method keeps a "
                                  "second cache step by step (as the authors' sampling loop does), which beam search "
                                  "would reorder; use greedy decoding or sampling with one sequence per prompt")

    @contextlib.contextmanager
    def __call__(self, model, inputs: dict | None = None, **gen_kwargs):
        """``with method(model, inputs):`` hooks for one ``model.generate(**inputs, ...)`` call."""
        inputs = dict(inputs or {})
        self.check(model, forward_inputs(inputs), {**inputs, **gen_kwargs})
        with contextlib.ExitStack() as stack:
            call = Call(model, inputs, stack)
            self.install(call)
            yield call

    def generate(self, model, **kwargs):
        """``model.generate(**kwargs)`` under this method."""
        with self(model, kwargs):
            return model.generate(**kwargs)

    @contextlib.contextmanager
    def around_generate(self, model):
        """Inside the block every ``model.generate(**kwargs)`` (e.g. a runner's or a pipeline's) runs under this
        method with its own inputs. Works inside or around a KVSmooth session (the previous ``generate``, the
        session's wrapper or the class's, is called and put back on exit)."""
        had, before = "generate" in vars(model), vars(model).get("generate")
        inner = model.generate

        def generate(*args, **kwargs):
            if args:
                raise MethodError(f"{self.name}: call generate with keyword arguments (input_ids=..., pixel_values=...)")
            with self(model, kwargs):
                return inner(**kwargs)

        model.__dict__["generate"] = generate
        try:
            yield self
        finally:
            if had:
                model.__dict__["generate"] = before
            else:
                model.__dict__.pop("generate", None)
