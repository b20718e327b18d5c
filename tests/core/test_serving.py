"""A smoothed model where models are served (issue 22): threads, streaming, long-lived attach, compiled wrappers and
the generate entry points a server or a notebook uses. Every test here failed on 92b7202."""

from __future__ import annotations

import functools
import gc
import re
import threading
import time
import weakref

import pytest
import torch
from transformers import GenerationMixin
from transformers.generation.streamers import BaseStreamer

from helpers import tiny_llama
from kvsmooth_hooks import KVSmoothConfig, SessionError, attach, smooth

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = dict(layers="1:-1")


@pytest.fixture(scope="module")
def model():
    return tiny_llama(layers=4)


def _prompt(n=6, seed=1):
    ids = torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(seed))
    return ids, torch.ones_like(ids)


def _kw(n=8, **extra):
    ids, mask = _prompt()
    return dict(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, **extra)


class Slow(BaseStreamer):
    """A streamer that makes each step take ``delay`` seconds and says when generation has started."""

    def __init__(self, delay: float):
        self.delay, self.started, self.puts = delay, threading.Event(), 0

    def put(self, value):
        self.puts += 1
        self.started.set()
        time.sleep(self.delay)

    def end(self):
        pass


def _smoothed_reference(model, cfg, n=8):
    with smooth(model, cfg):
        return model.generate(**_kw(n))


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# threads ---------------------------------------------------------------------------------------------------------
def _race(calls, trials):
    """Run the two ``calls`` at the same moment in two threads, ``trials`` times: results or exceptions."""
    out = []
    for _ in range(trials):
        barrier, res = threading.Barrier(len(calls)), [None] * len(calls)

        def work(i):
            barrier.wait()
            try:
                res[i] = calls[i]()
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                res[i] = exc

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out.append(res)
    return out


@pytest.mark.parametrize("entry", ["model.generate", "GenerationMixin.generate"])
def test_a_second_concurrent_generate_is_refused_and_the_first_is_right(model, entry):
    cfg = KVSmoothConfig(**CFG)
    ref = _smoothed_reference(model, cfg)
    with smooth(model, cfg):
        call = model.generate if entry == "model.generate" else functools.partial(GenerationMixin.generate, model)
        results = _race([lambda: call(**_kw(streamer=Slow(0.01)))] * 2, trials=6)
    for res in results:
        outs = [r for r in res if isinstance(r, torch.Tensor)]
        errs = [r for r in res if isinstance(r, Exception)]
        assert len(outs) == 1 and len(errs) == 1, res
        assert torch.equal(outs[0], ref)
        assert isinstance(errs[0], SessionError) and "already generating" in str(errs[0]), errs[0]


def test_attach_is_atomic(model):
    cfg = KVSmoothConfig(**CFG)
    for _ in range(25):
        res = _race([lambda: attach(model, cfg)] * 2, trials=1)[0]
        sessions = [r for r in res if not isinstance(r, Exception)]
        errs = [r for r in res if isinstance(r, Exception)]
        for s in sessions:
            s.remove()
        assert len(sessions) == 1 and len(errs) == 1, res
        assert isinstance(errs[0], SessionError) and "already has an active kvsmooth session" in str(errs[0])
    assert _hooks(model) == 0


def test_sequential_generates_from_several_threads_are_served(model):
    """A thread pool serving one request at a time: each call is its own run, whichever thread runs it."""
    cfg = KVSmoothConfig(**CFG)
    ref = _smoothed_reference(model, cfg)
    lock = threading.Lock()
    outs = []

    def serve():
        with lock:
            outs.append(GenerationMixin.generate(model, **_kw()))

    with smooth(model, cfg) as s:
        threads = [threading.Thread(target=serve) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(outs) == 3 and all(torch.equal(o, ref) for o in outs)
    assert len(s.trace) == 3


# streaming -------------------------------------------------------------------------------------------------------
def _word_tokenizer(n=128):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(n)}, unk_token="w3"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w3")


def test_streaming_the_documented_pattern(model):
    """docs/serving.md: the `with` block holds the thread start, the streamer loop and the join."""
    from transformers import TextIteratorStreamer

    cfg = KVSmoothConfig(**CFG)
    ref = _smoothed_reference(model, cfg, n=12)
    tok = _word_tokenizer()
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    with smooth(model, cfg) as s:
        worker = threading.Thread(target=model.generate, kwargs=_kw(12, streamer=streamer))
        worker.start()
        text = "".join(streamer)
        worker.join()
    assert text.split() == tok.decode(ref[0, 6:]).split()
    assert s.trace.tensor("lambda").shape[0] == 11


def _in_thread(call):
    box = {}

    def work():
        try:
            box["out"] = call()
        except Exception as exc:  # noqa: BLE001
            box["err"] = exc

    t = threading.Thread(target=work)
    t.start()
    return t, box


@pytest.mark.parametrize("entry", ["model.generate", "GenerationMixin.generate"])
def test_leaving_the_block_while_generate_runs_waits_for_it(model, entry):
    cfg = KVSmoothConfig(**CFG)
    ref = _smoothed_reference(model, cfg, n=10)
    streamer = Slow(0.03)
    with pytest.warns(UserWarning, match="waited .* for the generate call running in thread"):
        with smooth(model, cfg) as s:
            call = model.generate if entry == "model.generate" else functools.partial(GenerationMixin.generate, model)
            worker, box = _in_thread(lambda: call(**_kw(10, streamer=streamer)))
            assert streamer.started.wait(10)
    assert not worker.is_alive()  # the block's exit waited for the generation
    assert "err" not in box, box.get("err")
    assert torch.equal(box["out"], ref) and s.trace.tensor("lambda").shape[0] == 9
    assert _hooks(model) == 0


def test_remove_timeout_ends_the_generation_with_the_steps_smoothed(model):
    streamer = Slow(0.05)
    with pytest.warns(UserWarning, match="ended it"):
        with smooth(model, KVSmoothConfig(**CFG), remove_timeout=0.2):
            worker, box = _in_thread(lambda: model.generate(**_kw(40, streamer=streamer)))
            assert streamer.started.wait(10)
    worker.join(10)
    assert _hooks(model) == 0 and not worker.is_alive()
    err = box.get("err")
    assert isinstance(err, SessionError), box
    m = re.search(r"(\d+) of its decode steps were smoothed", str(err))
    assert m and 0 < int(m.group(1)) < 39, err


def test_generate_taken_inside_the_block_and_called_after_it_is_refused(model):
    with smooth(model, KVSmoothConfig(**CFG)):
        g = model.generate
    with pytest.raises(SessionError, match="was removed before this call"):
        g(**_kw(3))


# compiled wrappers -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_torch_compile_wrapper_is_smoothed(model, site):
    cfg = KVSmoothConfig(site=site, **CFG)
    ref = _smoothed_reference(model, cfg)
    compiled = torch.compile(model, backend="eager", dynamic=True)
    with smooth(compiled, cfg) as s:
        out = compiled.generate(**_kw())
    assert s.model is model
    assert torch.equal(out, ref) and s.trace.tensor("lambda").shape[0] == 7
    assert _hooks(model) == 0 and "generate" not in vars(model)


@pytest.mark.parametrize("site", ["kv_proj", pytest.param("cache", marks=pytest.mark.slow)])  # dynamo traces: ~15 s each
def test_compiled_forwards_are_retraced_when_a_session_starts_and_ends(model, site):
    """Dynamo does not guard on module hooks: graphs traced before the session would run without its hooks, and
    graphs traced inside it would keep calling them after it; the session drops them at attach and remove."""
    cfg = KVSmoothConfig(site=site, **CFG)
    compiled = torch.compile(model, backend="eager", dynamic=True)
    with torch.no_grad(), smooth(model, cfg) as plain:  # forwards through the compiled module itself: a manual loop
        want = _manual_greedy(model, 4)
    with torch.no_grad():
        unsmoothed = _manual_greedy(compiled, 4)  # graphs traced before the session, without its hooks
        with smooth(compiled, cfg) as s:
            torch.testing.assert_close(_manual_greedy(compiled, 4), want)
        torch.testing.assert_close(_manual_greedy(compiled, 4), unsmoothed)  # and none traced with them is kept after it
    assert not torch.allclose(want, unsmoothed, atol=1e-3)
    torch.testing.assert_close(s.trace.tensor("lambda"), plain.trace.tensor("lambda"))


def _manual_greedy(model, n):
    """Greedy manual decode loop; the logits of every decode step ``[n, V]``."""
    out = model(input_ids=_prompt(n=10)[0], use_cache=True)
    logits = []
    for _ in range(n):
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        out = model(input_ids=tok, past_key_values=out.past_key_values, use_cache=True)
        logits.append(out.logits[0, -1])
    return torch.stack(logits)


# other generate entry points -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["prompt_lookup", "assistant"])
@pytest.mark.parametrize("entry", ["taken_before", "partial", "GenerationMixin.generate"])
def test_draft_verification_is_refused_by_the_hooks(model, mode, entry):
    extra = {"assistant_model": tiny_llama(layers=2, seed=3)} if mode == "assistant" else {"prompt_lookup_num_tokens": 3}
    g = model.generate  # taken before the session: the session's generate wrapper never runs
    with smooth(model, KVSmoothConfig(**CFG)) as s:
        call = {"taken_before": g, "partial": functools.partial(g),
                "GenerationMixin.generate": functools.partial(GenerationMixin.generate, model)}[entry]
        with pytest.raises(SessionError, match="verify several draft tokens"):
            call(**_kw(8, **extra))
        assert len(s.trace) == 0 or s.trace.tensor("lambda").shape[0] == 0  # refused before any smoothed step
        out = call(**_kw(8))  # the session still works
    assert torch.equal(out, _smoothed_reference(model, KVSmoothConfig(**CFG)))


@pytest.mark.parametrize("how", ["generate_batch", "cache_implementation=paged", "GenerationMixin.generate_batch",
                                 "init_continuous_batching", "continuous_batching_context_manager"])
def test_continuous_batching_is_refused_to_the_caller(model, how):
    ids, _ = _prompt()
    with smooth(model, KVSmoothConfig(scorer="key_similarity", **CFG)):
        with pytest.raises(SessionError, match="continuous batching"):
            if how == "generate_batch":
                model.generate_batch([ids[0].tolist()], max_new_tokens=3)
            elif how == "GenerationMixin.generate_batch":
                GenerationMixin.generate_batch(model, [ids[0].tolist()], max_new_tokens=3)
            elif how == "init_continuous_batching":
                model.init_continuous_batching()
            elif how == "continuous_batching_context_manager":
                with model.continuous_batching_context_manager():
                    pass
            else:
                model.generate(input_ids=ids, max_new_tokens=3, cache_implementation="paged")
    assert "init_continuous_batching" not in vars(model)


# long-lived attach and memory ------------------------------------------------------------------------------------
@pytest.mark.parametrize("site,scorer", [("cache", "row_entropy"), ("kv_proj", "row_entropy"), ("cache", "key_similarity")])
def test_attach_without_remove_does_not_keep_a_dropped_model_alive(site, scorer):
    from kvsmooth_hooks.core import probe

    users = dict(probe._KEY_USERS)
    m = tiny_llama(layers=3, seed=5)
    s = attach(m, KVSmoothConfig(site=site, scorer=scorer, layers="all"))
    m.generate(**_kw(4))
    gone = weakref.ref(m)
    cfg_id = id(m.config)
    del m, s
    gc.collect()
    assert gone() is None
    assert cfg_id not in probe._CONFIGS
    assert dict(probe._KEY_USERS) == users


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("outer_first", [True, False])
def test_a_session_on_the_inner_decoder_of_a_smoothed_model_is_refused(family, outer_first):
    from tiny_vlms import build_tiny_vlm

    vlm = build_tiny_vlm(family)[0]
    inner = vlm.model.language_model
    first, second = (vlm, inner) if outer_first else (inner, vlm)
    with smooth(first, KVSmoothConfig(**CFG)):  # CFG: layers the 4-layer tiny decoder has
        with pytest.raises(SessionError, match=f"already smoothed by .*{type(first).__name__}"):
            smooth(second, KVSmoothConfig(**CFG)).attach()
    assert _hooks(vlm) == 0
    with smooth(second, KVSmoothConfig(**CFG)):  # either one alone is fine
        pass
