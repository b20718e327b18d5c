"""Protocols in one word and the protocol record (kvsmooth_hooks/protocols.py)."""

import pytest

from kvsmooth_hooks.protocols import (ProtocolError, auto_batch_size, cpu_threads_per_process, ids_digest,
                                      model_family, protocol_record, resolve_protocol)
from kvsmooth_hooks.core.config import KVSmoothConfig


def test_kvsmooth_chair_for_llava():
    s = resolve_protocol("kvsmooth-chair", "llava-hf/llava-1.5-7b-hf")
    assert (s["benchmark"], s["n"], s["seed"], s["max_new_tokens"]) == ("chair", 500, 0, 512)
    assert s["decoding"] == {"do_sample": False, "num_beams": 1} and s["layers"] == "3:-1"
    assert s["preset"] == "llava-1.5" and KVSmoothConfig.preset(s["preset"]).lambda_ref == 0.9
    assert s["template"] == "opera-llava-1.5" and s["question"] == "Please describe this image in detail."
    assert resolve_protocol("kvsmooth-chair", "Salesforce/instructblip-vicuna-7b")["preset"] == "instructblip"
    assert resolve_protocol("kvsmooth-chair", "x", family="minigpt-4")["template"] == "opera-minigpt4"


def test_unknown_protocol_or_family_is_refused_with_the_fix():
    with pytest.raises(ProtocolError, match="protocols: kvsmooth-chair"):
        resolve_protocol("chair", "llava")
    with pytest.raises(ProtocolError, match="--set family="):
        resolve_protocol("kvsmooth-chair", "Qwen/Qwen2-VL-7B-Instruct")
    assert model_family("Qwen/Qwen2-VL-7B-Instruct") is None


def test_record_digests_and_versions():
    a = protocol_record(template="opera-llava-1.5", ids=[1, 2, 3], decoding={"max_new_tokens": 512}, seeds={"items": 0})
    b = protocol_record(template="opera-llava-1.5", ids=[1, 3, 2])
    assert a["item_ids_sha256"] == ids_digest([1, 2, 3]) != b["item_ids_sha256"]  # order matters
    assert a["template"]["text"].endswith("USER: {image} {question} ASSISTANT:") and a["n_items"] == 3
    assert set(a["versions"]) >= {"kvsmooth_hooks", "torch", "transformers"}


def test_thread_and_batch_rules():
    assert cpu_threads_per_process(2, 16, env={}) == 8
    assert cpu_threads_per_process(3, 2, env={}) == 1
    assert cpu_threads_per_process(2, 16, env={"OMP_NUM_THREADS": "4"}) is None  # the user's setting wins
    assert auto_batch_size(100, "cpu") == 8 and auto_batch_size(3, "cpu") == 3
    gib = 1 << 30
    assert auto_batch_size(500, "cuda:0", kv_bytes_per_item=gib // 2, free_bytes=40 * gib) == 40
    assert auto_batch_size(500, "cuda:0", kv_bytes_per_item=gib // 64, free_bytes=40 * gib) == 64
