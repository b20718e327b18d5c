"""Tiny random vision-language models *with processors*, built offline and saved as local model folders.

``save_tiny_vlm(family, folder)`` writes a folder that ``AutoProcessor.from_pretrained`` and
``AutoModelForImageTextToText.from_pretrained`` load like a hub checkpoint (so the runner's real loading
code is what the tests run). Families: ``llava`` (CLIP tower, LLaVA-1.5 chat template),
``qwen2_vl`` (Qwen2-VL processor: 16x16 images -> 4 image tokens) and ``instructblip`` (OPT language model,
Q-Former with 4 query tokens, no chat template). The tokenizer is word-level over :data:`WORDS`.
Every model generates exactly ``max_new_tokens`` (no EOS), and weights depend only on the family.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>",
         "USER:", "ASSISTANT:", "Please", "help", "me", "describe", "the", "image", "in", "detail.", "a", "an",
         "dog", "cat", "car", "bench", "table", "person", "on", "with", "and", "zebra", "frisbee", "is", "there",
         "Is", "Answer", "yes", "no", "Yes", "No", "this", "Describe", "?", "question", "using", "single", "word",
         "or", "phrase.", "image?", "picture", "photo", "man", "woman", "chair", "cup", "kite", "tree", "sky"]
FAMILIES = ("llava", "qwen2_vl", "instructblip")
_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=512, initializer_range=0.5)


def _tokenizer(extra_special=("<image>",)):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": list(extra_special)})  # "<image><image>" splits
    return tok


def _no_eos(model):
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    return model


class Qwen2VLImageTextProcessor:
    """Images + text like ``Qwen2VLProcessor`` (which needs torchvision for its video half, absent here).

    Expands each ``<|image_pad|>`` to ``t*h*w / merge**2`` copies, as the real processor does.
    """

    def __init__(self, image_processor, tokenizer, chat_template):
        self.image_processor, self.tokenizer, self.chat_template = image_processor, tokenizer, chat_template

    def apply_chat_template(self, conversation, add_generation_prompt=True, **kw):
        return self.tokenizer.apply_chat_template(conversation, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def __call__(self, images=None, text=None, return_tensors="pt", padding=False, **kw):
        from transformers import BatchFeature

        out = dict(self.image_processor(images=images, return_tensors="pt")) if images is not None else {}
        merge = self.image_processor.merge_size ** 2
        grids = iter(out.get("image_grid_thw", []))
        texts = []
        for t in text:
            while "<|image_pad|>" in t:
                n = int(next(grids).prod()) // merge
                t = t.replace("<|image_pad|>", "<|placeholder|>" * n, 1)
            texts.append(t.replace("<|placeholder|>", "<|image_pad|>"))
        out.update(self.tokenizer(texts, return_tensors=return_tensors, padding=padding))
        return BatchFeature(out)

    def batch_decode(self, *a, **kw):
        return self.tokenizer.batch_decode(*a, **kw)


def load_tiny_vlm(model_id: str, device="cpu", dtype=torch.float32):
    """A ``--loader`` for the runner: ``model_id`` ``tiny-<family>`` -> ``(model, processor)``."""
    model, proc = build_tiny_vlm(model_id.removeprefix("tiny-"))
    return model.to(device=device, dtype=dtype), proc


def build_tiny_vlm(family: str):
    """``(model, processor)`` of one family, random weights from seed 0."""
    import transformers as T

    torch.manual_seed(0)
    ids = {w: i for i, w in enumerate(WORDS)}
    if family == "llava":
        tok = _tokenizer()
        chat = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
        ip = T.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        proc = T.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                                chat_template=chat, num_additional_image_tokens=1)
        cfg = T.LlavaConfig(text_config=T.LlamaConfig(vocab_size=len(WORDS), **_TEXT),
                            vision_config=T.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                             num_attention_heads=2, image_size=32, patch_size=8,
                                                             projection_dim=32),
                            image_token_index=ids["<image>"], image_seq_length=16,
                            vision_feature_select_strategy="default", vision_feature_layer=-2)
        model = T.LlavaForConditionalGeneration(cfg)
    elif family == "qwen2_vl":
        tok = _tokenizer(("<|image_pad|>", "<|vision_start|>", "<|vision_end|>"))
        chat = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                "<|vision_start|><|image_pad|><|vision_end|> {% else %}{{ c['text'] }} {% endif %}{% endfor %}"
                "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
        ip = T.Qwen2VLImageProcessorPil(patch_size=4, temporal_patch_size=2, merge_size=2,
                                        min_pixels=16 * 16, max_pixels=16 * 16)
        proc = Qwen2VLImageTextProcessor(ip, tok, chat)
        text = dict(_TEXT, vocab_size=len(WORDS), bos_token_id=1, eos_token_id=2, rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2],
                                                                    "rope_theta": 10000.0})
        vis = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=4, patch_size=4, spatial_merge_size=2,
                   temporal_patch_size=2)
        cfg = T.Qwen2VLConfig(text_config=text, vision_config=vis, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<unk>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"])
        model = T.Qwen2VLForConditionalGeneration(cfg)
    elif family == "instructblip":
        tok = _tokenizer()
        qtok = _tokenizer()
        ip = T.BlipImageProcessorPil(size={"height": 16, "width": 16})
        proc = T.InstructBlipProcessor(image_processor=ip, tokenizer=tok, qformer_tokenizer=qtok, num_query_tokens=4)
        qf = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  vocab_size=len(WORDS) + 8, encoder_hidden_size=32, max_position_embeddings=128)
        opt = T.OPTConfig(vocab_size=len(WORDS) + 8, hidden_size=32, ffn_dim=64, num_hidden_layers=4,
                          num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=512, pad_token_id=0,
                          bos_token_id=1, eos_token_id=2, init_std=0.5)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=16,
                      patch_size=8)
        cfg = T.InstructBlipConfig(vision_config=vision, qformer_config=qf, text_config=opt.to_dict(),
                                   num_query_tokens=4, image_token_index=ids["<image>"])
        model = T.InstructBlipForConditionalGeneration(cfg)
    else:
        raise KeyError(family)
    return _no_eos(model.eval()), proc


def save_tiny_vlm(family: str, folder: str | Path) -> Path:
    """Write the model and processor of ``family`` to ``folder`` (loadable with the Auto classes)."""
    folder = Path(folder)
    model, proc = build_tiny_vlm(family)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


class MiniGPT4Like(torch.nn.Module):
    """A stand-in with MiniGPT-4's shape: an image encoder whose output is projected into a Hugging Face Llama's
    embedding space, and answers generated by ``llama_model.generate(inputs_embeds=...)`` around an
    ``<ImageHere>`` placeholder in the ``###Human: <Img><ImageHere></Img> ... ###Assistant:`` template."""

    def __init__(self):
        super().__init__()
        import transformers as T

        torch.manual_seed(0)
        self.tokenizer = _tokenizer()
        self.llama_model = _no_eos(T.LlamaForCausalLM(T.LlamaConfig(vocab_size=len(WORDS), **_TEXT)).eval())
        self.llama_proj = torch.nn.Linear(3 * 8 * 8, _TEXT["hidden_size"])

    def encode_img(self, image) -> torch.Tensor:
        """PIL image -> ``[1, 4, hidden]`` (four 8x8 patches of a 16x16 resize)."""
        import numpy as np

        x = torch.from_numpy(np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.float32) / 255.0)
        patches = x.reshape(2, 8, 2, 8, 3).permute(0, 2, 4, 1, 3).reshape(1, 4, 3 * 8 * 8)
        dev = next(self.llama_model.parameters())
        return self.llama_proj(patches.to(dev.device, dev.dtype))

    @torch.inference_mode()
    def answer(self, prompt: str, image, max_new_tokens: int, **gen) -> tuple[str, int]:
        before, after = "<s> ###Human: <Img>", f"</Img> {prompt} ###Assistant:"
        emb = self.llama_model.get_input_embeddings()
        dev = emb.weight.device
        ids = [self.tokenizer(t, return_tensors="pt", add_special_tokens=False).input_ids.to(dev) for t in (before, after)]
        embeds = torch.cat([emb(ids[0]), self.encode_img(image), emb(ids[1])], dim=1)
        out = self.llama_model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long,
                                                                                         device=dev),
                                        max_new_tokens=max_new_tokens, **gen)
        return self.tokenizer.decode(out[0], skip_special_tokens=True).strip(), int(out.shape[1])


def load_minigpt4_like(model_id: str, device="cpu", dtype=torch.float32):
    """A ``--loader`` in the shape docs/experiments.md describes for MiniGPT-4: smooth the inner Llama."""
    from PIL import Image

    from kvsmooth_hooks.runner import ModelBundle

    wrapper = MiniGPT4Like().to(device=device, dtype=dtype)

    def generate(items, gen_kwargs):
        answers = []
        for it in items:
            with Image.open(it.image) as im:
                answers.append(wrapper.answer(it.prompt, im, **gen_kwargs))
        return answers

    return ModelBundle(model=wrapper.llama_model, generate=generate, modality="image",
                       info={"class": "MiniGPT4Like", "prompt_format": "###Human: <Img><ImageHere></Img> ... ###Assistant:"})


def load_tiny_text(model_id: str, device="cpu", dtype=torch.float32):
    """A ``--loader`` for text benchmarks: a tiny random Llama and the word-level tokenizer (no chat template)."""
    import transformers as T

    torch.manual_seed(0)
    model = _no_eos(T.LlamaForCausalLM(T.LlamaConfig(vocab_size=len(WORDS), **_TEXT)).eval())
    return model.to(device=device, dtype=dtype), _tokenizer()


def record_sessions(monkeypatch) -> list:
    """Make ``kvsmooth_hooks.smooth`` (what the runner and the lmms-eval plugin call) trace and keep its sessions."""
    import kvsmooth_hooks

    made = []
    real = kvsmooth_hooks.smooth

    def spy(model, cfg=None, **kw):
        made.append(real(model, cfg, **{**kw, "trace": True}))
        return made[-1]

    monkeypatch.setattr(kvsmooth_hooks, "smooth", spy)
    return made
