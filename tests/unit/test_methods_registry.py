"""The method registry: names, parameters from strings, settings, entry points, a user method in one class."""

from dataclasses import dataclass

import pytest

from kvsmooth_hooks.methods import METHODS, Method, MethodError, build_method, get_method, register_method
from kvsmooth_hooks.methods.base import ENTRY_POINT_GROUP


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
