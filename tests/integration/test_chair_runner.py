"""experiments/chair_eval.py end to end on CPU: a tiny random LLaVA, an offline processor, a synthetic COCO folder."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EXP = Path(__file__).resolve().parents[2] / "experiments"
sys.path.insert(0, str(EXP))

import chair_eval  # noqa: E402

import kvsmooth_hooks  # noqa: E402
from kvsmooth_hooks import KVSmoothConfig  # noqa: E402

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "USER:", "ASSISTANT:", "Please", "help", "me", "describe", "the",
         "image", "in", "detail.", "a", "dog", "cat", "car", "bench", "table", "person", "on", "with", "and", "zebra",
         "frisbee", "is", "there"]
IMAGE_IDS = [391895, 522418, 184613]


def tiny_llava_and_processor():
    """A random LlavaForConditionalGeneration (6 text layers) and a LlavaProcessor, both built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor, PreTrainedTokenizerFast)

    try:  # the PIL backend needs no torchvision
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as ImageProcessor

    vocab = {w: i for i, w in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})  # so "<image><image>" splits
    chat = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
            "<image>\n{% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
            "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    image_processor = ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                               vision_feature_select_strategy="default", chat_template=chat,
                               num_additional_image_tokens=1)  # CLIP's CLS token, dropped by "default"
    torch.manual_seed(0)
    cfg = LlavaConfig(
        text_config=LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                initializer_range=0.5),
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=32, patch_size=8, projection_dim=32),
        image_token_index=vocab["<image>"], image_seq_length=16, vision_feature_select_strategy="default",
        vision_feature_layer=-2)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None  # exactly max_new_tokens per caption
    return model, processor


def llava_supported(model) -> bool:
    try:
        kvsmooth_hooks.adapters.get_adapter(model)
    except kvsmooth_hooks.adapters.UnsupportedModelError:
        return False
    return True


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is faster, and far faster when other processes load the CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def llava():
    return tiny_llava_and_processor()


@pytest.fixture
def coco(tmp_path):
    """Three small random JPEGs named like val2014, and minimal COCO 2014 annotation files."""
    from PIL import Image

    images = tmp_path / "val2014"
    images.mkdir()
    rng = np.random.RandomState(0)
    for i in IMAGE_IDS:
        Image.fromarray(rng.randint(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / f"COCO_val2014_{i:012d}.jpg")
    (images / "README.txt").write_text("not an image")
    ann = tmp_path / "annotations"
    ann.mkdir()
    cats = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 15, "name": "bench"}]
    inst = {"categories": cats, "annotations": [
        {"image_id": IMAGE_IDS[0], "category_id": 18}, {"image_id": IMAGE_IDS[0], "category_id": 15},
        {"image_id": IMAGE_IDS[1], "category_id": 1}, {"image_id": IMAGE_IDS[2], "category_id": 18}]}
    caps = {"annotations": [{"image_id": IMAGE_IDS[0], "caption": "A dog sits next to a bench."},
                            {"image_id": IMAGE_IDS[1], "caption": "A man with a frisbee."},
                            {"image_id": IMAGE_IDS[2], "caption": "A dog and a cat on a table."}]}
    empty_inst = {"categories": cats, "annotations": []}
    (ann / "instances_val2014.json").write_text(json.dumps(inst))
    (ann / "captions_val2014.json").write_text(json.dumps(caps))
    (ann / "instances_train2014.json").write_text(json.dumps(empty_inst))
    (ann / "captions_train2014.json").write_text(json.dumps({"annotations": []}))
    return images, ann


def _argv(coco, out, *extra):
    images, ann = coco
    return ["--model", "tiny-random-llava", "--coco-images", str(images), "--coco-annotations", str(ann),
            "--gt-cache", str(out.parent / "gt_cache.json"), "--n", "2", "--seed", "1", "--max-new-tokens", "5",
            "--bootstrap", "50", "--no-progress", "--out", str(out), *extra]


def test_runner_end_to_end(llava, coco, tmp_path, monkeypatch, capsys):
    model, processor = llava
    smoothed = llava_supported(model)
    arms = "baseline,smoothed" if smoothed else "baseline"
    sessions = []
    real_smooth = kvsmooth_hooks.smooth

    def spy(m, cfg=None, **kw):  # the runner's sessions, with the trace on so we can look at them
        sessions.append(real_smooth(m, cfg, **{**kw, "trace": True}))
        return sessions[-1]

    monkeypatch.setattr(kvsmooth_hooks.session, "smooth", spy)  # what the runner's generate() calls
    loads = []

    def loader(model_id, device, dtype):
        loads.append((model_id, device, dtype))
        return model, processor

    out = tmp_path / "run"
    argv = _argv(coco, out, "--preset", "llava-1.5", "--arms", arms, "--device", "cpu")
    assert chair_eval.main(argv, loader=loader) == 0
    assert loads == [("tiny-random-llava", "cpu", torch.float32)]
    printed = capsys.readouterr().out
    assert "| baseline |" in printed and "reproduce with: python experiments/chair_eval.py" in printed

    chosen = chair_eval.choose_image_ids(IMAGE_IDS, 2, 1)
    assert chosen == __import__("random").Random(1).sample(sorted(IMAGE_IDS), 2)
    res = json.loads((out / "results.json").read_text())
    assert res["image_ids"] == chosen
    assert json.loads((out / "image_ids.json").read_text())["image_ids"] == chosen
    assert res["max_new_tokens"] == 5 and res["prompt"] == chair_eval.PAPER_PROMPT
    assert res["formatted_prompt"] == "USER: <image>\nPlease help me describe the image in detail. ASSISTANT:"
    assert res["config"]["lambda_ref"] == 0.9 and res["machine"]["torch"] == torch.__version__
    for arm in arms.split(","):
        r = res["arms"][arm]
        for k in ("CHAIR_S", "CHAIR_I", "Recall", "Precision", "F1", "Len", "seconds_per_caption"):
            assert isinstance(r[k], float) and r[k] >= 0, (arm, k)
        assert r["counts"]["num_captions"] == 2 and r["mean_new_tokens"] == 5
        lines = [json.loads(l) for l in (out / f"captions_{arm}.jsonl").read_text().splitlines()]
        assert [l["image_id"] for l in lines] == chosen
        assert all(isinstance(l["caption"], str) and l["seconds"] > 0 for l in lines)
        details = json.loads((out / f"chair_{arm}.json").read_text())
        assert [c["image_id"] for c in details["captions"]] == chosen
        # ground truth = instances + objects in the reference captions
        gt = {c["image_id"]: set(c["gt_objects"]) for c in details["captions"]}
        assert gt.get(IMAGE_IDS[1], {"person", "frisbee"}) == {"person", "frisbee"}
    if smoothed:
        assert len(sessions) == 2  # batch size 1: one session per caption, removed afterwards
        for s in sessions:
            assert not s.attached and len(s.trace.runs) == 1
            lam = s.trace.tensor("lambda")  # [steps, batch, layers, kv heads]
            assert lam.numel() > 0 and float(lam.max()) > 0
    else:
        pytest.skip("kvsmooth_hooks.adapters has no adapter for LLaVA in this branch: smoothed arm not tested")


def test_runner_resumes_and_refuses_mixed_settings(llava, coco, tmp_path, capsys):
    model, processor = llava
    out = tmp_path / "run"
    calls = []

    def loader(*a):
        calls.append(a)
        return model, processor

    argv = _argv(coco, out, "--arms", "baseline", "--batch-size", "2")
    assert chair_eval.main(argv, loader=loader) == 0
    first = (out / "captions_baseline.jsonl").read_text()
    # an interrupted run: drop the last caption; the rerun redoes only that one
    (out / "captions_baseline.jsonl").write_text(first.splitlines(keepends=True)[0])
    assert chair_eval.main(argv, loader=loader) == 0
    again = (out / "captions_baseline.jsonl").read_text().splitlines()
    assert len(again) == 2 and [json.loads(l)["caption"] for l in again] == \
        [json.loads(l)["caption"] for l in first.splitlines()]
    capsys.readouterr()
    assert chair_eval.main(_argv(coco, out, "--arms", "baseline", "--max-new-tokens", "7"), loader=loader) == 2
    assert "different max_new_tokens" in capsys.readouterr().err


def _no_model(*a):
    raise AssertionError("the model must not be loaded when the inputs are bad")


def test_runner_input_errors(coco, tmp_path, capsys):
    images, ann = coco
    out = tmp_path / "run"
    bad = ["--coco-images", str(tmp_path / "nope")]
    assert chair_eval.main(_argv(coco, out) + bad, loader=_no_model) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --coco-images") and "nope" in err and "image folder not found" in err

    (ann / "captions_train2014.json").unlink()
    assert chair_eval.main(_argv(coco, tmp_path / "run2"), loader=_no_model) == 2
    err = capsys.readouterr().err
    assert "missing COCO 2014 annotation file" in err and "captions_train2014.json" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert chair_eval.main(_argv(coco, out) + ["--coco-images", str(empty)], loader=_no_model) == 2
    assert "no images named like COCO_val2014_" in capsys.readouterr().err

    assert chair_eval.main(_argv(coco, out) + ["--arms", "baseline,sharpened"], loader=_no_model) == 2
    assert "--arms" in capsys.readouterr().err

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("lambda_ref: 3\n")
    assert chair_eval.main(_argv(coco, out) + ["--config", str(cfg)], loader=_no_model) == 2
    assert "lambda_ref" in capsys.readouterr().err


def test_prompt_formats(llava):
    _, processor = llava

    class NoTemplate:
        chat_template = None

    assert chair_eval.format_prompt(NoTemplate(), "Hi.") == "USER: <image>\nHi. ASSISTANT:"
    assert chair_eval.format_prompt(processor, "Hi.") == "USER: <image>\nHi. ASSISTANT:"
    assert KVSmoothConfig.preset("llava-1.5").lambda_ref == 0.9
