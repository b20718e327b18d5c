"""What does a CHAIR run cost per arm? LLaVA-1.5-7B-shaped random weights, synthetic COCO-sized images, no downloads.

    python experiments/chair_cost.py --n 8 --out results/chair_cost          # on a GPU: 7B shape, float16
    python experiments/chair_cost.py --shape tiny --n 2 --max-new-tokens 4    # CPU smoke run (tiny shape)

Builds ``LlavaForConditionalGeneration`` from LLaVA-1.5-7B's configuration (CLIP ViT-L/14 at 336 px, 576 image
tokens, a 32-layer 4096-wide Llama, vocabulary 32064) with random weights, an offline processor (CLIP image
preprocessing, a word-level tokenizer over the vocabulary), writes ``--n`` random 640x480 JPEGs named like COCO
val2014 and a ground-truth file, and runs the experiment runner's ``chair`` benchmark for the baseline and the
``llava-1.5`` preset with EOS disabled, so every caption has exactly ``--max-new-tokens`` (512: the worst case).
It prints seconds per caption per arm and the extrapolated cost of 500 images; the run folder has the usual
tables and ``machine.json``. CHAIR values of random weights mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvsmooth_hooks.runner.cli import main as run_main  # noqa: E402

SHAPES = {
    "7b": dict(text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, max_position_embeddings=4096),
               vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=336, patch_size=14, projection_dim=768)),
    "tiny": dict(text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                           num_key_value_heads=4, max_position_embeddings=1024),
                 vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=336, patch_size=14, projection_dim=32)),
}
VOCAB = 32064
IMAGE_TOKEN = 32000


def _processor():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(3, IMAGE_TOKEN)] + ["<image>", "<pad>"]
    words += [f"x{i}" for i in range(len(words), VOCAB)]
    words[3:11] = ["USER:", "ASSISTANT:", "Please", "help", "me", "describe", "the", "image"]
    words[11:14] = ["in", "detail.", "\n"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    ip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    return LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1)  # no chat template: LLaVA-1.5's conversation format


def load(model_id: str, device="cpu", dtype=None):
    """``--loader chair_cost:load``; ``model_id`` ``random-llava-1.5-<shape>`` (shape 7b or tiny)."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    shape = SHAPES[model_id.rsplit("-", 1)[-1]]
    cfg = LlavaConfig(text_config=LlamaConfig(vocab_size=VOCAB, **shape["text"]),
                      vision_config=CLIPVisionConfig(**shape["vision"]), image_token_index=IMAGE_TOKEN,
                      image_seq_length=576, vision_feature_select_strategy="default", vision_feature_layer=-2)
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype or torch.float32)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    model.generation_config.eos_token_id = None  # every caption runs to max_new_tokens
    model.generation_config.pad_token_id = VOCAB - 1
    return model, _processor()


def write_images(folder: Path, n: int) -> Path:
    """``n`` random 640x480 JPEGs named like COCO val2014, and a ground-truth JSON for them."""
    import numpy as np
    from PIL import Image

    images = folder / "val2014"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for i in range(1, n + 1):
        path = images / f"COCO_val2014_{i:012d}.jpg"
        if not path.exists():
            Image.fromarray(rng.randint(0, 255, (480, 640, 3), dtype=np.uint8)).save(path)
    gt = folder / "gt.json"
    gt.write_text(json.dumps({str(i): ["person", "dog"] for i in range(1, n + 1)}))
    return gt


def run(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--n", type=int, default=8, help="images per arm (default 8; the cost of 500 is extrapolated)")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--out", type=Path, default=Path("results/chair_cost"))
    args, rest = ap.parse_known_args(argv)
    data = args.out / "data"
    gt = write_images(data, args.n)
    code = run_main(["--model", f"random-llava-1.5-{args.shape}", "--loader", "chair_cost:load", "--benchmark", "chair",
                     "--data", str(data), "--set", f"gt={gt.resolve()}", "--n", str(args.n), "--max-new-tokens",
                     str(args.max_new_tokens), "--arms", "baseline,llava-1.5", "--bootstrap", "0",
                     "--out", str(args.out / "run"), *rest])
    if code:
        return code
    res = json.loads((args.out / "run" / "results.json").read_text())
    print(f"\n{args.shape}-shaped LLaVA-1.5, {args.max_new_tokens} new tokens per caption, batch 1, "
          f"{res['machine'].get('gpu', res['machine']['cpu'])}:")
    for row in res["arms"]:
        s = row["seconds_per_item"]
        print(f"  {row['arm']:<10} {s:8.2f} s/caption   500 images: {500 * s / 3600:6.2f} h")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # chair_cost:load for the runner's --loader
    sys.exit(run())
