"""Adapters register like sites and scorers: one decorator, or the entry-point group kvsmooth_hooks.adapters."""

from __future__ import annotations

import importlib.metadata as md

import pytest

from helpers import tiny_llama
from kvsmooth_hooks.core.adapters import GenericAdapter, get_adapter, register_adapter
from kvsmooth_hooks.core.adapters import registry


class PluginAdapter(GenericAdapter):
    model_types = ("llama",)


def test_an_adapter_plugin_registers_through_the_entry_point_group(monkeypatch):
    eps = [md.EntryPoint("broken", "no_such_adapter_module:A", registry.ENTRY_POINT_GROUP),
           md.EntryPoint("mine", f"{__name__}:PluginAdapter", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(md, "entry_points", lambda group=None: [e for e in eps if e.group == group])
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "ADAPTERS", list(registry.ADAPTERS))
    monkeypatch.setattr(registry, "BROKEN", {})
    model = tiny_llama(layers=2)
    assert type(GenericAdapter(model)) is GenericAdapter
    with pytest.warns(UserWarning, match="adapter plugin 'broken'.*no_such_adapter_module:A failed to load"):
        assert type(get_adapter(model)) is PluginAdapter  # the working plugin is used, the broken one named
    assert "llama" in registry.supported_model_types()


def test_register_adapter_needs_a_way_to_match():
    with pytest.raises(TypeError, match="needs model_types or an accepts"):
        register_adapter(type("Nothing", (GenericAdapter,), {}))
