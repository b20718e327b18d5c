"""Prompt templates as data: the reference harnesses' formats, the processor's chat template, or your own.

Published hallucination numbers depend on the prompt (CHAIR moves by points between formats), and most papers
reuse a reference harness's template rather than a Hugging Face chat template. ``data/templates.json`` holds
those templates, each with its source (repository@commit:path and symbol), the harness's own CHAIR question,
and who used it. A template's text has two placeholders: ``{question}`` (the benchmark's question) and
``{image}`` (where the image goes: the processor's image token, ``<ImageHere>`` for a custom loader).

    get_template("opera-llava-1.5").render("Please describe this image in detail.")
    get_template("chat")                      # the processor's (or tokenizer's) chat template
    get_template("USER: {image}\\n{question} ASSISTANT:")   # a user string: both placeholders required
    format_prompt(processor, "opera-llava-1.5", question)   # text for ``processor(images=..., text=...)``
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .core.errors import UserError

__all__ = ["PromptTemplate", "TemplateError", "get_template", "list_templates", "format_prompt", "CHAT", "IMAGE_HERE"]

CHAT = "chat"  # the name of the processor's own chat template
IMAGE_HERE = "<ImageHere>"  # OPERA / PAI's image placeholder, kept for loaders that split the text at the image
_DATA = Path(__file__).parent / "data" / "templates.json"


class TemplateError(UserError):
    """A template name or string that cannot be used; the message names it and the fix."""


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt format. ``text`` is None for the processor's chat template (``name == "chat"``)."""

    name: str
    text: str | None
    family: str = "any"
    question: str | None = None  # the harness's own CHAIR question, if it has one
    source: tuple[str, ...] = ()
    used_by: str = ""
    notes: str = ""

    @property
    def is_chat(self) -> bool:
        return self.text is None

    def render(self, question: str, image_token: str = IMAGE_HERE) -> str:
        """The prompt text: ``{question}`` and ``{image}`` replaced (other braces are left alone)."""
        if self.text is None:
            raise TemplateError("template 'chat' has no text of its own: use format_prompt(processor, 'chat', question)")
        return self.text.replace("{image}", image_token).replace("{question}", question)

    def record(self) -> dict:
        """What a result records: name, text, digest of the text, source."""
        text = self.text if self.text is not None else "<processor chat template>"
        return {"name": self.name, "text": text, "sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
                "family": self.family, "source": list(self.source)}


@lru_cache(maxsize=1)
def _table() -> dict[str, PromptTemplate]:
    data = json.loads(_DATA.read_text(encoding="utf-8"))["templates"]
    table = {CHAT: PromptTemplate(CHAT, None, source=("the model's processor / tokenizer chat_template",),
                                  used_by="Hugging Face model cards; lmms-eval's llava_hf")}
    for name, t in data.items():
        table[name] = PromptTemplate(name, t["text"], t.get("family", "any"), t.get("question"),
                                     tuple(t.get("source", ())), t.get("used_by", ""), t.get("notes", ""))
    return table


def list_templates() -> list[str]:
    """Names of the built-in templates (``chat`` first)."""
    return list(_table())


def get_template(spec: str | PromptTemplate) -> PromptTemplate:
    """A built-in template by name, or a user string containing ``{question}`` and ``{image}``."""
    if isinstance(spec, PromptTemplate):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise TemplateError(f"template {spec!r}: give a name ({', '.join(list_templates())}) or a string with "
                            "{question} and {image}")
    table = _table()
    if spec in table:
        return table[spec]
    if "{question}" not in spec and "{image}" not in spec:
        raise TemplateError(f"unknown template {spec!r}; built-in templates: {', '.join(table)}; or give a string "
                            "with {question} and {image}")
    missing = [p for p in ("{question}", "{image}") if p not in spec]
    if missing:
        raise TemplateError(f"template string {spec!r} lacks {' and '.join(missing)}: a template needs {{question}} "
                            "(the benchmark's question) and {image} (where the image goes; leave it in for text models, "
                            "it renders empty there)")
    for p in ("{question}", "{image}"):
        if spec.count(p) > 1:
            raise TemplateError(f"template string {spec!r} has {p} more than once")
    return PromptTemplate("custom", spec, source=("user string",))


def format_prompt(processor, template: str | PromptTemplate, question: str, image: bool = True) -> str:
    """The text to give ``processor(images=..., text=...)`` (or a tokenizer, ``image=False``).

    ``chat``: the processor's chat template with one image (the tokenizer's for text models). A template string:
    ``{image}`` becomes the processor's image token (``processor.image_token``, e.g. ``<image>``, which the
    processor expands to the image's tokens); processors that place their query tokens themselves (InstructBLIP,
    BLIP-2) and text models get it empty.
    """
    t = get_template(template)
    tok = getattr(processor, "tokenizer", processor)
    if t.is_chat:
        if image and getattr(processor, "chat_template", None):
            conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return processor.apply_chat_template(conv, add_generation_prompt=True)
        if not image and getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           tokenize=False)
        raise TemplateError(f"template 'chat': {type(processor).__name__} has no chat template; name a template "
                            f"({', '.join(n for n in list_templates() if n != CHAT)}) or give a string")
    if not image or type(processor).__name__.startswith(("InstructBlip", "Blip")):
        return t.render(question, "")
    token = getattr(processor, "image_token", None)
    if not token:
        raise TemplateError(f"{type(processor).__name__} has no image_token to put at {{image}} of template {t.name!r}; "
                            "use template 'chat' or a --loader that splits the text at <ImageHere>")
    return t.render(question, token)
