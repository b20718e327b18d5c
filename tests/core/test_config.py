"""Config schema v1: defaults, validation messages, round trips, presets, JSON Schema."""

import json

import pytest
import yaml

from kvsmooth_hooks import PRESETS, ConfigError, KVSmoothConfig

FULL = {
    "site": "kv_proj",
    "targets": ["value"],
    "granularity": "head",
    "smooth_prefill": False,
    "scorer": {"name": "random", "seed": 3},
    "policy": "linear",
    "lambda_ref": 0.7,
    "window": 9,
    "clip": 0.1,
    "layers": [1, 2, -1],
    "overrides": [
        {"layers": [10, 11], "heads": [0, 2], "enabled": True, "targets": ["value"], "lambda_ref": 0.7},
        {"layers": "2:4", "scorer": "key_similarity", "window": 5},
    ],
}


def test_defaults_are_the_papers():
    c = KVSmoothConfig()
    assert (c.site, c.targets, c.granularity, c.smooth_prefill) == ("cache", ["key", "value"], "layer", False)
    assert (c.scorer.name, c.policy, c.lambda_ref, c.window, c.clip, c.layers) == (
        "row_entropy", "fifo_rank", 0.9, 15, 0.2, "3:-1")


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_round_trip_every_format(tmp_path, suffix):
    c = KVSmoothConfig.from_dict(FULL)
    path = c.save(tmp_path / f"cfg{suffix}")
    back = KVSmoothConfig.from_file(path)
    assert back == c
    assert back.overrides[1].scorer.name == "key_similarity"
    assert back.scorer.params == {"seed": 3}


def test_saved_file_is_self_describing(tmp_path):
    path = KVSmoothConfig(lambda_ref=0.5).save(tmp_path / "c.yaml")
    data = yaml.safe_load(path.read_text())
    for key in ("version", "toolkit_version", "site", "targets", "granularity", "smooth_prefill", "scorer",
                "policy", "lambda_ref", "window", "clip", "layers", "overrides"):
        assert key in data, key
    assert data["scorer"] == "row_entropy" and data["lambda_ref"] == 0.5
    assert data["toolkit_version"] == __import__("kvsmooth_hooks").__version__


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"bogus": 1}, "bogus: unknown field"),
        ({"overrides": [{"layers": [1], "lamda_ref": 0.5}]}, "overrides[0].lamda_ref: unknown field"),
        ({"targets": []}, "targets: targets must be a non-empty subset of ['key', 'value']"),
        ({"targets": ["key", "query"]}, "targets[1]: Input should be 'key' or 'value'"),
        ({"window": 0}, "window: Input should be greater than or equal to 1"),
        ({"window": "ten"}, "window: Input should be a valid integer"),
        ({"lambda_ref": 1.2}, "lambda_ref: Input should be less than or equal to 1"),
        ({"lambda_ref": -0.1}, "lambda_ref: Input should be greater than or equal to 0"),
        ({"clip": -0.2}, "clip: Input should be greater than or equal to 0"),
        ({"site": "attention"}, "site: unknown site 'attention'; registered sites: ['attn_out', 'cache', 'kv_proj']"),
        ({"granularity": "token"}, "granularity: Input should be 'layer' or 'head'"),
        ({"policy": "rank"}, "policy: Input should be 'fifo_rank', 'fixed' or 'linear'"),
        ({"layers": "3-5"}, "'3-5' is not a layer selection"),
        ({"scorer": "entropy"}, "unknown scorer 'entropy'; registered scorers:"),
        ({"overrides": [{"heads": []}]}, "overrides[0].heads: heads must be a non-empty list"),
        ({"version": 2}, "version: Input should be 1"),
        ({"smooth_prefill": "maybe"}, "smooth_prefill: Input should be a valid boolean"),
    ],
)
def test_rejections_name_the_field_and_the_allowed_values(data, needle):
    with pytest.raises(ConfigError) as exc:
        KVSmoothConfig.from_dict(data)
    assert needle in str(exc.value)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        KVSmoothConfig.from_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.toml"
    bad.write_text("x = 1")
    with pytest.raises(ConfigError, match="unknown suffix '.toml'"):
        KVSmoothConfig.from_file(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json' is not valid JSON"):
        KVSmoothConfig.from_file(broken)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("window: 0\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml: invalid config: window"):
        KVSmoothConfig.from_file(wrong)


def test_unsafe_yaml_is_not_executed(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError):
        KVSmoothConfig.from_file(evil)


def test_presets():
    assert set(PRESETS) == {"llava-1.5", "minigpt-4", "instructblip", "off"}
    assert KVSmoothConfig.preset("llava-1.5").lambda_ref == 0.9
    assert KVSmoothConfig.preset("minigpt-4").lambda_ref == 0.5
    assert KVSmoothConfig.preset("instructblip").lambda_ref == 0.7
    for name in ("llava-1.5", "minigpt-4", "instructblip"):
        p = KVSmoothConfig.preset(name)
        assert (p.layers, p.window, p.clip, p.site, p.scorer.name) == ("3:-1", 15, 0.2, "cache", "row_entropy")
    off = KVSmoothConfig.preset("off")
    assert (off.policy, off.lambda_ref) == ("fixed", 0.0)
    assert KVSmoothConfig.preset("llava-1.5", site="kv_proj").site == "kv_proj"
    with pytest.raises(ConfigError, match="unknown preset 'llava'; available presets"):
        KVSmoothConfig.preset("llava")


def test_published_json_schema_is_current():
    schema = KVSmoothConfig.json_schema()
    assert schema["additionalProperties"] is False
    assert {"site", "targets", "overrides", "layers", "scorer"} <= set(schema["properties"])
    from helpers import ROOT

    published = ROOT / "docs" / "kvsmooth-config.schema.json"
    assert json.loads(published.read_text()) == schema, "regenerate with: kvsmooth config schema -o docs/kvsmooth-config.schema.json"


def test_from_source_and_updated(tmp_path):
    path = KVSmoothConfig(window=7).save(tmp_path / "c.yaml")
    assert KVSmoothConfig.from_source(path).window == 7
    assert KVSmoothConfig.from_source(preset="minigpt-4").lambda_ref == 0.5
    assert KVSmoothConfig.from_source(default={"clip": 0.1}).clip == 0.1
    assert KVSmoothConfig.from_source() == KVSmoothConfig()
    with pytest.raises(ConfigError, match="either a config file or a preset"):
        KVSmoothConfig.from_source(path, "off")
    base = KVSmoothConfig(scorer={"name": "random", "seed": 2}, overrides=[{"layers": [1], "lambda_ref": 0.5}])
    new = base.updated(lambda_ref=0.3, targets=["value"])
    assert (new.lambda_ref, new.targets, new.scorer.params, new.overrides) == (0.3, ["value"], {"seed": 2}, base.overrides)
    assert base.lambda_ref == 0.9  # a copy
    with pytest.raises(ConfigError, match="window: Input should be greater than or equal to 1"):
        base.updated(window=0)


def test_site_choices_come_from_the_site_registry(tmp_path, monkeypatch):
    """A site registered anywhere is a valid config value and appears in the JSON Schema and the CLI choices;
    every file of core/sites/ registers the site of its own name."""
    import pkgutil

    import kvsmooth_hooks.core.sites as sites_pkg
    from kvsmooth_hooks.cli import build_parser
    from kvsmooth_hooks.core import registry
    from kvsmooth_hooks.core.sites import Site, register_site

    files = {m.name for m in pkgutil.iter_modules(sites_pkg.__path__)} - {"base"}
    assert files == set(registry.SITES) and all(registry.SITES[n].name == n for n in files)
    monkeypatch.setitem(registry.SITES, "my_site", None)
    register_site("my_site")(type("MySite", (Site,), {}))
    assert KVSmoothConfig(site="my_site").site == "my_site"
    assert "my_site" in KVSmoothConfig.json_schema()["properties"]["site"]["enum"]
    demo = build_parser()._subparsers._group_actions[0].choices["demo"]
    assert "my_site" in next(a for a in demo._actions if a.dest == "site").choices
