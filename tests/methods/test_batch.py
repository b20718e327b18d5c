"""Each method on a batch gives every sequence what it gets alone (per-sequence contrast, image positions,
premature layer, text-only prompt), also with left padding."""

import pytest
import torch

from helpers import tiny_llama
from method_helpers import hooked_generate, no_hooks_left, vlm_case
from kvsmooth_hooks.methods import build_method


@pytest.mark.parametrize("name,family", [("vcd", "llava"), ("vcd", "qwen2_vl"), ("pai", "llava"), ("pai", "instructblip"),
                                         ("dola", "llava"), ("middle-layer", "llava")])
def test_batch_of_two_images_equals_each_alone(name, family):
    model, inputs = vlm_case(family, batch=2)
    params = {"start_layer": 1, "end_layer": 3} if name == "middle-layer" else {}
    method = build_method(name, **params)
    both, _ = hooked_generate(model, inputs, 4, method)
    for i in range(2):
        alone = {k: v[i: i + 1] for k, v in inputs.items()}
        if family == "qwen2_vl":  # patches of both images in one tensor
            n = int(inputs["image_grid_thw"][0].prod())
            alone["pixel_values"] = inputs["pixel_values"][i * n: (i + 1) * n]
        one, _ = hooked_generate(model, alone, 4, method)
        assert torch.equal(both[i: i + 1], one), (name, i)
    assert no_hooks_left(model)


def test_dola_left_padded_batch_equals_each_prompt_alone():
    model = tiny_llama(layers=6)
    prompts = [[1, 17, 33, 5, 90, 41, 7], [1, 60, 61, 62]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    both, _ = hooked_generate(model, {"input_ids": ids, "attention_mask": mask}, 5, build_method("dola"))
    for i, p in enumerate(prompts):
        one, _ = hooked_generate(model, {"input_ids": torch.tensor([p]), "attention_mask": torch.ones(1, len(p),
                                                                                                    dtype=torch.long)},
                                 5, build_method("dola"))
        assert torch.equal(both[i, width:], one[0, len(p):]), i
