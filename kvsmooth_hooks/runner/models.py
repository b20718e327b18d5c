"""Loading a model for the runner, and asking it a batch of items.

A :class:`ModelBundle` is what the runner needs: ``model``, the module that ``smooth()`` hooks (a Hugging Face
model, or the language model inside a wrapper), and ``generate(items, gen_kwargs) -> [(text, new_tokens)]``.

* vision-language models: ``AutoProcessor`` + ``AutoModelForImageTextToText``; the prompt goes through the
  processor's chat template with one image, or LLaVA-1.5's ``USER: <image>\\n... ASSISTANT:`` format when the
  processor has none (InstructBLIP's processor takes the plain instruction and adds its query tokens itself);
* text models: ``AutoModelForCausalLM`` + ``AutoTokenizer`` (chat template when there is one), or ``smollm2``;
* anything else: ``--loader module:function``; ``function(model_id, device=..., dtype=...)`` returns a
  :class:`ModelBundle` or a ``(model, processor)`` pair. MiniGPT-4, for example, keeps its own repository and
  calls a Hugging Face Llama's ``generate`` with ``inputs_embeds``: its loader returns
  ``ModelBundle(model=minigpt4.llama_model, generate=...)`` and smoothing hooks that Llama (docs/experiments.md).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

LLAVA15_FORMAT = "USER: <image>\n{prompt} ASSISTANT:"

__all__ = ["ModelBundle", "load_bundle", "hf_bundle", "format_vlm_prompt", "resolve_device_dtype", "LoaderError"]


class LoaderError(ValueError):
    """A model could not be loaded as asked (bad ``--loader``, unknown model kind); the message says why."""


@dataclass
class ModelBundle:
    """A model as the runner uses it.

    ``model``: the ``torch.nn.Module`` that ``smooth(model, config)`` hooks; ``generate(items, gen_kwargs)``:
    one answer per item as ``(text, number of new tokens)``; ``modality``: ``"image"`` or ``"text"``;
    ``info``: how prompts are formatted (recorded with the results).
    """

    model: Any
    generate: Callable[[list, dict], list[tuple[str, int]]]
    modality: str = "image"
    info: dict = field(default_factory=dict)


def resolve_device_dtype(device: str, dtype: str, local_rank: int = 0):
    """``auto`` device: ``cuda:<LOCAL_RANK>`` when CUDA is there, else CPU; ``auto`` dtype: float16 on GPU."""
    import torch

    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "float16" if str(device).startswith("cuda") else "float32"
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise LoaderError(f"--dtype {dtype!r}: use float32, float16 or bfloat16")
    return device, getattr(torch, dtype)


def format_vlm_prompt(processor, prompt: str) -> str:
    """The prompt in the model's chat format with one image."""
    if getattr(processor, "chat_template", None):
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(conv, add_generation_prompt=True)
    if type(processor).__name__.startswith(("InstructBlip", "Blip")):
        return prompt  # the processor prepends the query tokens
    return LLAVA15_FORMAT.format(prompt=prompt)


def _first_device(model):
    p = next(model.parameters())
    return p.device, p.dtype


def _decode(model, new, decode):
    """``(text, new tokens up to and with the first EOS)`` per row of ``new`` ``[B, T]`` (padding after EOS)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = set([eos] if isinstance(eos, int) else (eos or []))
    counts = []
    for row in new.tolist():
        ends = [i for i, t in enumerate(row) if t in eos]
        counts.append(ends[0] + 1 if ends else len(row))
    return [(t.strip(), c) for t, c in zip(decode(new, skip_special_tokens=True), counts)]


def hf_bundle(model, processor) -> ModelBundle:
    """A bundle for a Hugging Face VLM (processor with an image processor) or a text LM (tokenizer)."""
    import torch

    tok = getattr(processor, "tokenizer", processor)
    if tok is not None and hasattr(tok, "padding_side"):
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    is_vlm = hasattr(processor, "image_processor")

    def generate(items, gen_kwargs):
        from PIL import Image

        device, dtype = _first_device(model)
        if is_vlm:
            images = []
            for it in items:
                with Image.open(it.image) as im:
                    images.append(im.convert("RGB"))
            texts = [format_vlm_prompt(processor, it.prompt) for it in items]
            enc = processor(images=images, text=texts, return_tensors="pt", padding=True)
        else:
            if getattr(tok, "chat_template", None):
                texts = [tok.apply_chat_template([{"role": "user", "content": it.prompt}], add_generation_prompt=True,
                                                 tokenize=False) for it in items]
            else:
                texts = [it.prompt + "\n" for it in items]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in enc.items()}
        with torch.inference_mode():
            out = model.generate(**enc, **gen_kwargs)
        return _decode(model, out[:, enc["input_ids"].shape[1]:], processor.batch_decode)

    fmt = ("chat template" if getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None)
           else ("plain instruction" if not is_vlm or type(processor).__name__.startswith("InstructBlip")
                 else "LLaVA-1.5 conversation"))
    return ModelBundle(model=model, generate=generate, modality="image" if is_vlm else "text",
                       info={"class": type(model).__name__, "processor": type(processor).__name__, "prompt_format": fmt})


def _import_loader(spec: str) -> Callable:
    if ":" not in spec:
        raise LoaderError(f"--loader {spec!r}: use module:function (e.g. my_minigpt4:load)")
    mod, fn = spec.split(":", 1)
    if "" not in sys.path:
        sys.path.insert(0, "")  # the current folder, as `python -m` has it
    try:
        module = importlib.import_module(mod)
    except ImportError as exc:
        raise LoaderError(f"--loader {spec!r}: cannot import module {mod!r} ({exc}); is it on PYTHONPATH?") from None
    if not callable(getattr(module, fn, None)):
        raise LoaderError(f"--loader {spec!r}: module {mod!r} has no function {fn!r}")
    return getattr(module, fn)


def load_bundle(model_id: str, device: str = "auto", dtype: str = "auto", loader: str | None = None,
                revision: str | None = None, device_map: str | None = None, local_rank: int = 0) -> ModelBundle:
    """Load ``model_id`` as a :class:`ModelBundle` (see the module docstring for the three kinds)."""
    dev, torch_dtype = resolve_device_dtype(device, dtype, local_rank)
    if loader:
        got = _import_loader(loader)(model_id, device=dev, dtype=torch_dtype)
        if isinstance(got, ModelBundle):
            return got
        if isinstance(got, tuple) and len(got) == 2:
            return hf_bundle(*got)
        raise LoaderError(f"--loader {loader!r} returned {type(got).__name__}; return a ModelBundle or (model, processor)")
    if model_id.lower() in ("smollm2", "smollm2-135m"):
        from ..models import load_smollm2

        model, tok = load_smollm2(quiet=True)
        return hf_bundle(model.to(device=dev, dtype=torch_dtype).eval(), tok)
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    try:
        cfg = AutoConfig.from_pretrained(model_id, revision=revision)
    except OSError as exc:
        raise LoaderError(f"--model {model_id!r}: cannot read its config ({str(exc).splitlines()[0]})") from None
    kw: dict[str, Any] = {"revision": revision, "dtype": torch_dtype}
    if device_map:
        kw["device_map"] = device_map
    if cfg.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        from transformers import AutoModelForImageTextToText as Auto
        from transformers import AutoProcessor as Proc
    else:
        from transformers import AutoModelForCausalLM as Auto
        from transformers import AutoTokenizer as Proc
    processor = Proc.from_pretrained(model_id, revision=revision)
    model = Auto.from_pretrained(model_id, **kw)
    if not device_map:
        model = model.to(dev)
    return hf_bundle(model.eval(), processor)
