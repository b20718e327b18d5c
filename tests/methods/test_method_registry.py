"""The method registry: names, parameters from strings, settings, entry points, a user method in one class."""

from dataclasses import dataclass

import pytest

from kvsmooth_hooks.methods import METHODS, Method, MethodError, build_method, get_method, register_method
from kvsmooth_hooks.methods.registry import ENTRY_POINT_GROUP


def test_builtin_methods_and_parameters():
    assert {"vcd", "pai", "dola"} <= set(METHODS)
    pai = build_method("pai", alpha="0.5", use_cfg="false", end_layer="30")
    assert (pai.alpha, pai.use_cfg, pai.end_layer) == (0.5, False, 30)
    assert build_method("dola", layers="high").settings() == {"method": "dola", "layers": "high", "relative_top": 0.1}
    with pytest.raises(MethodError, match="unknown method 'opera'.*dola"):
        get_method("opera")
    with pytest.raises(MethodError, match="use_cfg"):
        build_method("pai", use_cfg="maybe")
    assert ENTRY_POINT_GROUP == "kvsmooth_hooks.methods"


def test_register_a_method_in_one_class():
    @register_method
    @dataclass
    class Greedy(Method):
        temperature: float = 1.0
        name = "test-identity"

        def install(self, call):
            call.on_logits(lambda kwargs, logits: logits / self.temperature)

    try:
        assert get_method("test-identity") is Greedy
        assert build_method("test-identity", temperature="2").temperature == 2.0
        with pytest.raises(ValueError, match="already registered"):
            @register_method
            @dataclass
            class Other(Method):
                name = "test-identity"
    finally:
        METHODS.pop("test-identity")


def test_arm_tokens_and_method_sets():
    from kvsmooth_hooks.methods.arms import is_method_axis, method_arm_name, parse_method_sets, split_method

    assert split_method("vcd") == (None, "vcd")
    assert split_method("llava-1.5+vcd") == ("llava-1.5", "vcd")
    assert split_method("llava-1.5") == ("llava-1.5", None)
    assert split_method("my+cfg.yaml") == ("my+cfg.yaml", None)
    assert parse_method_sets(["vcd.alpha=0.5", "pai.gamma=2"]) == {"vcd": {"alpha": "0.5"}, "pai": {"gamma": "2"}}
    with pytest.raises(MethodError, match="METHOD.PARAM"):
        parse_method_sets(["alpha=0.5"])
    with pytest.raises(MethodError, match="unknown method 'vdc'"):
        parse_method_sets(["vdc.alpha=0.5"])
    with pytest.raises(MethodError, match="no parameter"):
        parse_method_sets(["vcd.gamma=0.5"])
    assert is_method_axis("vcd.alpha") and not is_method_axis("lambda_ref") and not is_method_axis("x.y")
    assert method_arm_name(build_method("vcd")) == "vcd"
    assert method_arm_name(build_method("vcd", alpha=0.5)) == "vcd-alpha=0.5"


def test_method_plugins_through_entry_points(monkeypatch):
    import importlib.metadata as md

    from kvsmooth_hooks.methods import registry

    eps = [md.EntryPoint("broken", "no_such_plugin_module:M", ENTRY_POINT_GROUP),
           md.EntryPoint("vcd2", "kvsmooth_hooks.methods.vcd:VCD", ENTRY_POINT_GROUP),
           md.EntryPoint("notamethod", "kvsmooth_hooks.methods.vcd:vcd_logits", ENTRY_POINT_GROUP)]
    monkeypatch.setattr(md, "entry_points", lambda group=None: [e for e in eps if e.group == group])
    monkeypatch.setattr(registry, "METHODS", registry.METHODS.fresh_copy())  # entry points not loaded yet
    assert registry.get_method("vcd2").name == "vcd" and registry.is_method("vcd2")
    with pytest.raises(MethodError, match=r"method 'broken': .*no_such_plugin_module:M failed to load"):
        registry.get_method("broken")
    with pytest.raises(MethodError, match="not a Method subclass"):
        registry.get_method("notamethod")
