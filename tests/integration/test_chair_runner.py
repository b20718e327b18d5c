"""experiments/chair_eval.py end to end on CPU: tiny random LLaVA, offline processor, synthetic COCO folder."""

import json
import sys
from pathlib import Path

import pytest
import torch

EXP = Path(__file__).resolve().parents[2] / "experiments"
sys.path.insert(0, str(EXP))

import chair_eval  # noqa: E402
from archs import llava  # noqa: E402


def tiny_processor():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>", "USER:", "<image>", "ASSISTANT:"] + [f"w{i}" for i in range(121)]
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>", extra_special_tokens={"image_token": "<image>"})
    ip = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1)


def coco_folder(tmp: Path):
    from PIL import Image

    images, ann = tmp / "val2014", tmp / "annotations"
    images.mkdir()
    ann.mkdir()
    ids = [139, 285, 632]
    for i in ids:
        Image.fromarray((torch.rand(20, 24, 3) * 255).byte().numpy()).save(images / f"COCO_val2014_{i:012d}.jpg")
    cats = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 62, "name": "chair"}]
    inst = {"categories": cats, "annotations": [{"image_id": 139, "category_id": 1}, {"image_id": 285, "category_id": 18},
                                                 {"image_id": 632, "category_id": 62}]}
    caps = {"annotations": [{"image_id": 139, "caption": "A man at a table."}, {"image_id": 632, "caption": "A bed."}]}
    for split in ("train", "val"):
        (ann / f"instances_{split}2014.json").write_text(json.dumps(inst if split == "val" else {"categories": cats, "annotations": []}))
        (ann / f"captions_{split}2014.json").write_text(json.dumps(caps if split == "val" else {"annotations": []}))
    return images, ann


def test_runner_end_to_end(tmp_path, capsys):
    images, ann = coco_folder(tmp_path)
    model, _, _ = llava()
    processor = tiny_processor()
    out = tmp_path / "run"
    argv = ["--coco-images", str(images), "--coco-annotations", str(ann), "--n", "2", "--seed", "3",
            "--max-new-tokens", "6", "--out", str(out), "--config", str(_cfg(tmp_path))]
    assert chair_eval.main(argv, load=lambda *a: (model, processor)) == 0
    chosen = json.loads((out / "chosen_images.json").read_text())
    assert chosen["image_ids"] == chair_eval.choose([139, 285, 632], 2, 3)
    res = json.loads((out / "results.json").read_text())
    assert res["chosen_image_ids"] == chosen["image_ids"]
    for arm in ("baseline", "smoothed"):
        caps = [json.loads(l) for l in (out / f"captions_{arm}.jsonl").read_text().splitlines()]
        assert [c["image_id"] for c in caps] == chosen["image_ids"] and all(c["seconds"] > 0 for c in caps)
        assert set(res["arms"][arm]) >= {"CHAIR_S", "CHAIR_I", "Recall", "F1", "Len", "s_per_caption"}
    assert "| smoothed |" in capsys.readouterr().out
    # resumable: a second run generates nothing new
    assert chair_eval.main(argv, load=lambda *a: (model, processor)) == 0
    assert len((out / "captions_smoothed.jsonl").read_text().splitlines()) == 2


def test_runner_input_errors(tmp_path):
    with pytest.raises(SystemExit, match="not a directory"):
        chair_eval.main(["--coco-images", str(tmp_path / "nope"), "--gt-objects", "x.json"])
    with pytest.raises(SystemExit, match="no file named like COCO_val2014"):
        chair_eval.main(["--coco-images", str(tmp_path), "--gt-objects", "x.json"])


def _cfg(tmp_path):
    from kvsmooth_hooks import KVSmoothConfig

    return KVSmoothConfig(layers="all").save(tmp_path / "cfg.yaml")
