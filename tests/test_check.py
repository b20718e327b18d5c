"""``kvsmooth check``: one verdict line per check, exit 0 only when every check passes, 2 with one line for mistakes."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from kvsmooth_hooks import sweep
from kvsmooth_hooks.cli import main
from remote_code import write

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    T.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2).save_pretrained(folder)
    return folder


def test_check_passes_on_a_random_llama_from_its_config(llama, capsys):
    assert main(["check", "--model", str(llama), "--random"]) == 0
    out = capsys.readouterr().out
    assert "4 layers x 2 KV heads (4 query heads)" in out
    assert out.count("PASS") == 3 and "FAIL" not in out  # both sites and the reference loop
    assert "verdict   smoothing works on this model" in out


def test_check_on_remote_code_needs_trust_and_then_passes(tmp_path, capsys):
    folder = write(tmp_path / "internlm2", "internlm2")
    assert main(["check", "--model", str(folder), "--random"]) == 2
    assert "add --trust-remote-code" in capsys.readouterr().err
    assert main(["check", "--model", str(folder), "--random", "--trust-remote-code"]) == 0
    assert "inline" in capsys.readouterr().out


def test_check_fails_with_exit_1_and_says_why(tmp_path, capsys):
    folder = write(tmp_path / "legacy", "qwenvl", legacy=True)  # a cache neither site can follow
    assert main(["check", "--model", str(folder), "--random", "--trust-remote-code"]) == 1
    out = capsys.readouterr().out
    assert out.count("FAIL") == 2 and "legacy tuples" in out and "does NOT work" in out


def test_check_detects_a_site_that_changes_nothing(llama, monkeypatch, capsys):
    """The checks can fail: a cache site whose blend does nothing is reported, not passed."""
    from kvsmooth_hooks.core.sites.cache import CacheSite

    monkeypatch.setattr(CacheSite, "_blend", lambda self, *a, **k: None)
    assert main(["check", "--model", str(llama), "--random"]) == 1
    assert "FAIL  cache    row_entropy: fail: lambda 0.9 left the logits unchanged" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--model", "/nonexistent/folder"], "cannot read a model config from '/nonexistent/folder'"),
    (["--model", "LLAMA", "--loader", "seq2seq", "--random"], "is not a generative model"),
    (["--model", "LLAMA"], "use --random"),
])
def test_user_mistakes_exit_2_with_one_line(llama, argv, message, capsys):
    argv = [str(llama) if a == "LLAMA" else a for a in argv]
    assert main(["check", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_sweep_record_is_the_check(monkeypatch):
    """The architecture sweep runs check_model: a record carries the same site results and the reference loop."""
    rec = sweep.sweep_one("LlamaForCausalLM")
    assert rec["cache"]["status"] == rec["kv_proj"]["status"] == "ok" and rec["reference"]["status"] == "ok"
    assert torch._C._len_torch_function_stack() == 0
