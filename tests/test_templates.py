"""Prompt templates as data (kvsmooth_hooks/templates.py, data/templates.json): the reference harnesses' texts,
and tiny VLM processors turning them into inputs with the image tokens where expected."""

import pytest
import torch
from PIL import Image

from tiny_vlms import WORDS, build_tiny_vlm
from kvsmooth_hooks.templates import TemplateError, format_prompt, get_template, list_templates

Q = "Please describe this image in detail."
SYS = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
       "detailed, and polite answers to the user's questions.")
ID = {w: i for i, w in enumerate(WORDS)}


def test_texts_are_the_harnesses():
    """Spelled out from OPERA chair_eval.py / eval configs, PAI constants.py, LLaVA conversation.py (see data sources)."""
    r = lambda name: get_template(name).render("<question>", "<ImageHere>")
    assert r("opera-llava-1.5-bare") == "USER: <ImageHere> <question> ASSISTANT:"
    assert r("opera-llava-1.5") == SYS + "USER: <ImageHere> <question> ASSISTANT:"  # system_message + prompt, no space
    assert r("pai-llava-1.5") == r("opera-llava-1.5")
    assert r("opera-minigpt4") == "###Human: <Img><ImageHere></Img> <question> ###Assistant:"
    assert r("opera-shikra") == SYS + "USER: <im_start><ImageHere><im_end> <question> ASSISTANT:"
    assert r("opera-instructblip") == "<ImageHere><question>"
    assert r("llava-vicuna_v1") == SYS + " USER: <ImageHere>\n<question> ASSISTANT:"
    assert get_template("opera-llava-1.5").question == Q
    assert get_template("pai-llava-1.5").question == "Please help me describe the image in detail."


def test_every_template_names_its_source():
    for name in list_templates():
        t = get_template(name)
        assert t.source, name
        if name != "chat":
            assert all("@" in s and ":" in s for s in t.source), name  # repository@commit:path
            assert "{question}" in t.text and "{image}" in t.text, name
        rec = t.record()
        assert rec["name"] == name and len(rec["sha256"]) == 16


@pytest.mark.parametrize("name", ["opera-llava-1.5-bare", "llava-vicuna_v1", "chat", "USER: {image}\n{question} ASSISTANT:"])
def test_llava_processor_puts_the_image_tokens_after_user(name):
    model, proc = build_tiny_vlm("llava")
    text = format_prompt(proc, name, Q)
    ids = proc(images=[Image.new("RGB", (32, 32))], text=[text], return_tensors="pt")["input_ids"][0].tolist()
    n = model.config.image_seq_length
    first = ids.index(ID["<image>"])
    assert ids[first:first + n] == [ID["<image>"]] * n and ids.count(ID["<image>"]) == n
    assert ids[first - 1] == ID["USER:"]
    assert ids[first + n:first + n + 2] == [ID["Please"], ID["describe"]] and ids[-1] == ID["ASSISTANT:"]
    with torch.no_grad():  # the inputs are usable: the model accepts them
        model(**proc(images=[Image.new("RGB", (32, 32))], text=[text], return_tensors="pt"))


def test_instructblip_gets_the_question_and_its_query_tokens_first():
    _, proc = build_tiny_vlm("instructblip")
    text = format_prompt(proc, "opera-instructblip", Q)
    assert text == Q
    ids = proc(images=[Image.new("RGB", (16, 16))], text=[text], return_tensors="pt")["input_ids"][0].tolist()
    assert ids[:4] == [ID["<image>"]] * 4 and ids[4:6] == [ID["Please"], ID["describe"]]


def test_text_models_render_without_image():
    from tiny_vlms import _tokenizer

    assert format_prompt(_tokenizer(), "opera-llava-1.5-bare", Q, image=False) == f"USER:  {Q} ASSISTANT:"


def test_bad_templates_are_refused_with_the_fix():
    with pytest.raises(TemplateError, match="unknown template 'llava'.*built-in"):
        get_template("llava")
    with pytest.raises(TemplateError, match=r"lacks \{image\}"):
        get_template("USER: {question} ASSISTANT:")
    with pytest.raises(TemplateError, match="more than once"):
        get_template("{image}{image} {question}")
    _, proc = build_tiny_vlm("qwen2_vl")  # a processor without image_token: only its chat template
    with pytest.raises(TemplateError, match="image_token"):
        format_prompt(proc, "opera-llava-1.5", Q)
    from tiny_vlms import _tokenizer

    with pytest.raises(TemplateError, match="no chat template"):
        format_prompt(_tokenizer(), "chat", Q, image=False)
