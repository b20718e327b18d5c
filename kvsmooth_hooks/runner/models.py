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

from ..core.errors import UserError

LLAVA15_FORMAT = "USER: <image>\n{prompt} ASSISTANT:"

__all__ = ["ModelBundle", "load_bundle", "hf_bundle", "format_vlm_prompt", "resolve_device_dtype", "LoaderError",
           "load_model_for_structure", "load_model", "LOADERS"]


class LoaderError(UserError):
    """A model could not be loaded as asked (bad ``--loader``, unknown model kind); the message says why."""


@dataclass
class ModelBundle:
    """A model as the runner uses it.

    ``model``: the ``torch.nn.Module`` that ``smooth(model, config)`` hooks; ``generate(items, gen_kwargs)``:
    one answer per item as ``(text, number of new tokens)``; ``modality``: ``"image"`` or ``"text"``;
    ``info``: how prompts are formatted (recorded with the results). ``prompt_template``: the template the runner
    asks for (``--template``, a name or string of :mod:`kvsmooth_hooks.templates`; None: the bundle's own format);
    a bundle that applies it sets ``accepts_template`` (``hf_bundle`` does; a ``--loader`` bundle may read
    ``bundle.prompt_template`` in its ``generate`` and set the flag).
    """

    model: Any
    generate: Callable[[list, dict], list[tuple[str, int]]]
    modality: str = "image"
    info: dict = field(default_factory=dict)
    prompt_template: Any = None
    accepts_template: bool = False


_DTYPES = ("float32", "float16", "bfloat16")


def resolve_device_dtype(device: str, dtype: str, local_rank: int = 0):
    """``auto`` device: ``cuda:<LOCAL_RANK>`` when CUDA is there, else CPU; ``auto`` dtype: float16 on GPU.
    A device torch does not know, or CUDA on a machine without it, is a :class:`LoaderError`."""
    import torch

    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise LoaderError(f"--device {device!r}: not a device; use auto, cpu, cuda, cuda:1, mps, ...") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LoaderError(f"--device {device!r}: this torch build ({torch.__version__}) sees no CUDA GPU; "
                           "use --device cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise LoaderError(f"--device {device!r}: there are {torch.cuda.device_count()} CUDA device(s)")
    if dtype == "auto":
        dtype = "float16" if dev.type == "cuda" else "float32"
    if dtype not in _DTYPES:
        raise LoaderError(f"--dtype {dtype!r}: use auto, {', '.join(_DTYPES)}")
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
    decode = getattr(processor, "batch_decode", None) or (lambda rows, **kw: [tok.decode(r, **kw) for r in rows])

    def generate(items, gen_kwargs):
        from PIL import Image

        from ..templates import format_prompt

        device, dtype = _first_device(model)
        if is_vlm:
            images = []
            for it in items:
                with Image.open(it.image) as im:
                    images.append(im.convert("RGB"))
            tmpl = bundle.prompt_template
            texts = [format_prompt(processor, tmpl, it.prompt) if tmpl is not None else format_vlm_prompt(processor, it.prompt)
                     for it in items]
            enc = processor(images=images, text=texts, return_tensors="pt", padding=True)
        elif bundle.prompt_template is not None:
            texts = [format_prompt(tok, bundle.prompt_template, it.prompt, image=False) for it in items]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        else:
            from ..models import chat_inputs

            enc = chat_inputs(tok, [it.prompt for it in items])
        enc = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in enc.items()}
        with torch.inference_mode():
            out = model.generate(**enc, **gen_kwargs)
        return _decode(model, out[:, enc["input_ids"].shape[1]:], decode)

    fmt = ("chat template" if getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None)
           else ("plain instruction" if not is_vlm or type(processor).__name__.startswith("InstructBlip")
                 else "LLaVA-1.5 conversation"))
    bundle = ModelBundle(model=model, generate=generate, modality="image" if is_vlm else "text",
                         info={"class": type(model).__name__, "processor": type(processor).__name__, "prompt_format": fmt},
                         accepts_template=True)
    return bundle


def _import_loader(spec: str) -> Callable:
    mod, _, fn = spec.partition(":")
    if not fn.isidentifier() or not all(part.isidentifier() for part in mod.split(".")):  # '', '.rel', 'a..b', '1x'
        raise LoaderError(f"--loader {spec!r}: use module:function with an absolute module name (e.g. "
                           "my_minigpt4:load, a file my_minigpt4.py in the current folder or on PYTHONPATH)")
    if "" not in sys.path:
        sys.path.insert(0, "")  # the current folder, as `python -m` has it
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as exc:
        if exc.name and mod.split(".")[0] == exc.name.split(".")[0]:
            raise LoaderError(f"--loader {spec!r}: cannot import module {mod!r} ({exc}); is it on PYTHONPATH?") from None
        raise LoaderError(f"--loader {spec!r}: module {mod!r} imports {exc.name!r}, which is not installed") from None
    except Exception as exc:  # the user's module fails while it loads
        raise LoaderError(f"--loader {spec!r}: importing module {mod!r} raised {type(exc).__name__}: "
                           f"{' '.join(str(exc).split())[:200]}; fix the module (python -c 'import {mod}')") from None
    if not callable(getattr(module, fn, None)):
        raise LoaderError(f"--loader {spec!r}: module {mod!r} has no function {fn!r}")
    func = getattr(module, fn)
    import inspect

    try:
        inspect.signature(func).bind("model-id", device="cpu", dtype=None)
    except TypeError:
        raise LoaderError(f"--loader {spec!r}: {fn}{inspect.signature(func)} cannot be called as "
                           f"{fn}(model_id, device=..., dtype=...); change its signature") from None
    except ValueError:  # no signature (a builtin): let the call decide
        pass
    return func


def load_bundle(model_id: str, device: str = "auto", dtype: str = "auto", loader: str | None = None,
                revision: str | None = None, device_map: str | None = None, local_rank: int = 0) -> ModelBundle:
    """Load ``model_id`` as a :class:`ModelBundle` (see the module docstring for the three kinds)."""
    dev, torch_dtype = resolve_device_dtype(device, dtype, local_rank)
    if loader:
        func = _import_loader(loader)
        try:
            got = func(model_id, device=dev, dtype=torch_dtype)
        except Exception as exc:  # the user's code: name it and keep its message
            raise LoaderError(f"--loader {loader!r}: {func.__name__}({model_id!r}, device={dev!r}, dtype=...) raised "
                               f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc
        if isinstance(got, ModelBundle):
            return got
        if isinstance(got, tuple) and len(got) == 2:
            return hf_bundle(*got)
        raise LoaderError(f"--loader {loader!r} returned {type(got).__name__}; return a ModelBundle or (model, processor)")
    from ..models import SMOLLM2_ALIASES, load_smollm2

    if model_id.lower() in SMOLLM2_ALIASES:
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


LOADERS = {  # --loader -> the Auto class that builds the model
    "causal-lm": "AutoModelForCausalLM",
    "image-text-to-text": "AutoModelForImageTextToText",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "speech-seq2seq": "AutoModelForSpeechSeq2Seq",
    "vision2seq": "AutoModelForVision2Seq",
}


def load_model(model: str, loader: str = "auto", random: bool = False, trust_remote_code: bool = False,
               attn_implementation: str | None = None):
    """The model named by ``model`` (a folder or a cached hub id), built by the Auto class of ``loader`` (``auto``: the
    first of :data:`LOADERS` that maps its config); ``random``: from the config alone (random weights, also on the
    ``meta`` device when called under ``torch.device("meta")``). :class:`LoaderError` for user mistakes."""
    import torch
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise LoaderError(f"'{model}' ships its own modeling code (auto_map): add --trust-remote-code if you trust "
                              "it") from None
        raise LoaderError(f"cannot read a model config from '{model}': {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise LoaderError(f"cannot read a model config from '{model}' (a folder with config.json, or a cached hub id): "
                          f"{str(exc).splitlines()[0]}") from None
    names = [LOADERS[loader]] if loader != "auto" else list(LOADERS.values())
    kw = {"trust_remote_code": trust_remote_code}
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    errors = []
    for name in names:
        auto = getattr(transformers, name)
        try:
            if random:
                torch.manual_seed(0)
                return auto.from_config(config, **kw).eval()
            return auto.from_pretrained(model, **kw).eval()
        except ValueError as exc:  # this Auto class does not map the config
            errors.append(f"{name}: {str(exc).splitlines()[0][:150]}")
        except OSError as exc:
            raise LoaderError(f"cannot load the weights of '{model}': {str(exc).splitlines()[0]} (use --random to "
                              "check with random weights from the config alone)") from None
    raise LoaderError(f"'{model}' ({type(config).__name__}) is not a generative model any of "
                      f"{', '.join(k for k in LOADERS if LOADERS[k] in names)} can build; " + "; ".join(errors[:2]))


def load_model_for_structure(name: str):
    """A model to resolve plans against: ``smollm2``, or a local HF directory / cached hub id.

    Only the architecture matters for plans, so the model is built from its config on the ``meta`` device (no
    weights are loaded) by :func:`load_model`.
    """
    import torch

    from ..models import SMOLLM2_ALIASES, SMOLLM2_NAME, cache_dir, load_smollm2

    if name.lower() in SMOLLM2_ALIASES:
        if not (cache_dir() / SMOLLM2_NAME / "config.json").is_file():
            load_smollm2()
        name = str(cache_dir() / SMOLLM2_NAME)
    with torch.device("meta"):
        return load_model(name, random=True)
