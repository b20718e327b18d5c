"""Arms (one model setting each) and grids of arms.

An :class:`Arm` is a name, a config (``None`` = the unhooked baseline) and the fields it shows in tables.
``--arms`` takes ``baseline``, ``off`` (the base config's layers with lambda 0: the control arm),
``smoothed`` (the base config), a preset name or a config file. Grids (``--grid``, registry :data:`GRIDS`):

* ``layers``: one layer at a time, sliding windows of k layers, prefixes and suffixes;
* ``scorers``: every scorer at each site;
* ``sweep``: the product of ``--axis FIELD=V1,V2,...`` (lambda_ref, window, clip, targets such as
  ``key+value``, layers with ``;`` between values, ...);

and grid files (``--grid-file``: YAML/JSON ``{arms: [{name, preset | config | set: {field: value}}]}``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.config import PRESETS, KVSmoothConfig
from ..core.errors import UserError

__all__ = ["Arm", "GRIDS", "register_grid", "parse_arms", "off_arm", "parse_axis", "grid_file_arms", "GridError",
           "check_arm_names", "KEYWORD_ARMS"]


class GridError(UserError):
    """A bad ``--arms``, ``--grid``, ``--axis`` or grid file; the message names it and the fix."""


@dataclass(frozen=True)
class Arm:
    """``name`` (a folder name), ``config`` (``None``: no smoothing), ``fields`` (table columns, e.g. kind /
    layers), ``method`` (an inference-time method of :mod:`kvsmooth_hooks.methods`, or ``None``)."""

    name: str
    config: KVSmoothConfig | None
    fields: dict = field(default_factory=dict)
    method: object = None

    def settings(self) -> dict | None:
        """What the arm's cell records: the config (``None`` for the baseline), or config and method."""
        from ..methods.arms import method_settings

        cfg = self.config.to_dict() if self.config is not None else None
        return cfg if self.method is None else {"kvsmooth": cfg, "method": method_settings(self.method)}


def off_arm(base: KVSmoothConfig) -> KVSmoothConfig:
    """The control arm: the base config's hooks and layers with lambda = 0 (must equal the baseline)."""
    return base.updated(policy="fixed", lambda_ref=0.0, clip=0.0)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_=.+" else "_" for c in name)


#: arm names with a meaning of their own (rows, reference lines of plots); a config file never takes one
KEYWORD_ARMS = ("baseline", "off", "smoothed", "paper")


def _config_arm_names(paths: list[str]) -> dict[str, str]:
    """A name per config file: its stem, unless that is a keyword, a preset or another file's stem; then the
    shortest tail of its path that tells it apart (``a/cfg.yaml``, ``b/cfg.yaml`` -> ``a-cfg``, ``b-cfg``;
    ``baseline.yaml`` -> ``baseline.yaml``)."""
    taken = set(KEYWORD_ARMS) | set(PRESETS)
    stems: dict[str, list[str]] = {}
    for p in paths:
        stems.setdefault(Path(p).stem, []).append(p)
    names = {}
    for stem, group in stems.items():
        if len(group) == 1 and stem not in taken:
            names[group[0]] = _safe(stem)
            continue
        for k in range(1, 64):
            tails = {p: _safe("-".join(Path(p).with_suffix("").parts[-k:]) if k > 1 else Path(p).name) for p in group}
            if len(set(tails.values())) == len(group) and not set(tails.values()) & taken:
                names.update(tails)
                break
        else:  # the same path twice: one arm
            names.update({p: _safe(Path(p).as_posix()) for p in group})
    return names


def _with_method(arm: Arm | None, name: str, method_sets: dict | None) -> Arm:
    """A method arm (``vcd``) or a KVSmooth arm with a method (``llava-1.5+vcd``)."""
    from ..methods import MethodError
    from ..methods.arms import arm_method

    try:
        label, method = arm_method(name, method_sets, arm.name if arm else None, bool(arm and arm.config))
    except MethodError as exc:
        raise GridError(f"--arms: {exc}") from None
    return Arm(label, None, {"kind": "method", "method": label}, method) if arm is None else \
        Arm(f"{arm.name}+{label}", arm.config, {**arm.fields, "method": label}, method)


def parse_arms(text: str, base: KVSmoothConfig, method_sets: dict | None = None) -> list[Arm]:
    """``baseline,off,smoothed,<preset>,<config file>`` -> arms (order kept; a token given twice is one arm;
    config files are named so that no two arms and no keyword share a name, see :func:`_config_arm_names`).
    A method name (``vcd``, ``pai``, ``dola``, ``middle-layer``, see :mod:`kvsmooth_hooks.methods`) is an arm of
    its own; ``<arm>+<method>`` (``llava-1.5+vcd``) runs both; ``method_sets``: ``{method: {param: value}}``."""
    from ..methods.arms import split_method

    raw = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    split = {t: split_method(t) for t in raw}
    tokens = list(dict.fromkeys(h for h, _ in split.values() if h is not None))
    files = [t for t in tokens if t not in KEYWORD_ARMS and t not in PRESETS
             and Path(t).suffix.lower() in (".yaml", ".yml", ".json")]
    file_names = _config_arm_names(files)
    arms: list[Arm] = []
    for tok in tokens:
        if tok == "baseline":
            arm = Arm("baseline", None, {"kind": "baseline"})
        elif tok == "off":
            arm = Arm("off", off_arm(base), {"kind": "off"})
        elif tok == "smoothed":
            arm = Arm("smoothed", base, {"kind": "smoothed"})
        elif tok in PRESETS:
            arm = Arm(tok, KVSmoothConfig.preset(tok), {"kind": "preset"})
        elif tok in file_names:
            arm = Arm(file_names[tok], KVSmoothConfig.from_file(tok), {"kind": "config", "file": tok})
        else:
            from ..methods import METHODS

            raise GridError(f"--arms: {tok!r} is not baseline, off, smoothed, a preset ({', '.join(sorted(PRESETS))}), "
                            f"a .yaml/.json config file or a method ({', '.join(sorted(METHODS))}; <arm>+<method> "
                            "combines one with smoothing)")
        arms.append(arm)
    by_token = dict(zip(tokens, arms))
    arms = []
    for t in raw:
        head, method = split[t]
        arms.append(by_token[head] if method is None else
                    _with_method(by_token[head] if head is not None else None, method, method_sets))
    if not arms:
        raise GridError("--arms is empty; e.g. --arms baseline,smoothed")
    return arms


def check_arm_names(arms: list[Arm]) -> list[Arm]:
    """Every arm name is a usable folder name and no two arms share one (else one would overwrite the other)."""
    from .store import cell_name

    seen: dict[str, Arm] = {}
    for a in arms:
        cell_name(a.name, f"arm {a.name!r}")
        if a.name in seen:
            raise GridError(f"two arms are named {a.name!r}; rename one (arm names are folder names)")
        seen[a.name] = a
    return arms


#: grid name -> function(base config, n_layers, options namespace) -> arms
GRIDS: dict[str, Callable] = {}


def register_grid(name: str):
    def wrap(fn):
        GRIDS[name] = fn
        return fn

    return wrap


@register_grid("layers")
def layer_grid(base: KVSmoothConfig, n_layers: int, opts) -> list[Arm]:
    """Single layers (every ``single_step``), windows of ``window_size`` (stride default k/2), prefixes and
    suffixes with boundaries every ``range_step``; ``parts`` picks among single, window, prefix, suffix."""
    L, parts = n_layers, {p.strip() for p in opts.parts.split(",") if p.strip()}
    unknown = parts - {"single", "window", "prefix", "suffix"}
    if unknown or not parts:
        raise GridError(f"--parts {opts.parts!r}: choose among single, window, prefix, suffix")
    for flag, value, part in (("--window-size", opts.window_size, "window"), ("--stride", opts.stride, "window"),
                              ("--single-step", opts.single_step, "single"), ("--range-step", opts.range_step, "prefix"),
                              ("--range-step", opts.range_step, "suffix")):
        if part in parts and value is not None and not 1 <= value <= L:
            raise GridError(f"{flag} {value}: must be between 1 and the model's {L} layers (grid part {part!r})")
    arms = [Arm("paper", base, {"kind": "paper", "layers": str(base.layers)})]
    if "single" in parts:
        arms += [Arm(f"single-{i}", base.updated(layers=[i]), {"kind": "single", "layers": str(i)})
                 for i in range(0, L, opts.single_step)]
    if "window" in parts:
        k = opts.window_size
        stride = opts.stride or max(1, k // 2)
        arms += [Arm(f"window-{i}-{i + k}", base.updated(layers=f"{i}:{i + k}"),
                     {"kind": "window", "layers": f"{i}..{i + k - 1}"}) for i in range(0, L - k + 1, stride)]
    if "prefix" in parts:
        arms += [Arm(f"prefix-{j}", base.updated(layers=f"0:{j}"), {"kind": "prefix", "layers": f"0..{j - 1}"})
                 for j in range(opts.range_step, L + 1, opts.range_step)]
    if "suffix" in parts:
        arms += [Arm(f"suffix-{j}", base.updated(layers=f"{j}:"), {"kind": "suffix", "layers": f"{j}..{L - 1}"})
                 for j in range(0, L, opts.range_step)]
    return arms


@register_grid("scorers")
def scorer_grid(base: KVSmoothConfig, n_layers: int, opts) -> list[Arm]:
    """Every scorer of ``opts.scorers`` at every site of ``opts.sites``."""
    from ..core.scorers import SCORERS

    from ..core.registry import site_names

    scorers = opts.scorers.split(",") if opts.scorers else sorted(SCORERS)
    sites = [s.strip() for s in opts.sites.split(",") if s.strip()]
    bad = [x for x in sites if x not in site_names()] + [x for x in scorers if x not in SCORERS]
    if bad or not sites or not scorers:
        raise GridError(f"--sites / --scorers: {bad[0] if bad else 'empty'!r} is not registered; sites: "
                        f"{', '.join(site_names())}; scorers: {', '.join(sorted(SCORERS))}")
    return [Arm(f"{sc}-{site}", base.updated(scorer=sc, site=site), {"kind": "scorer", "scorer": sc, "site": site})
            for site in sites for sc in scorers]


_NUMERIC = {"lambda_ref": float, "clip": float, "window": int}


def parse_axis(spec: str) -> tuple[str, list]:
    """``FIELD=V1,V2`` -> (field, values); targets as ``key+value``, layers separated by ``;``."""
    if "=" not in spec:
        raise GridError(f"--axis {spec!r}: use FIELD=V1,V2,...")
    name, values = spec.split("=", 1)
    vals = [v.strip() for v in values.split(";" if name == "layers" else ",") if v.strip()]
    if not vals:
        raise GridError(f"--axis {spec!r}: no values")
    if name == "targets":
        return name, [v.split("+") for v in vals]
    if name in _NUMERIC:
        try:
            return name, [_NUMERIC[name](v) for v in vals]
        except ValueError:
            raise GridError(f"--axis {spec!r}: {name} takes numbers") from None
    return name, vals


def _label(v) -> str:
    return "+".join(v) if isinstance(v, list) else str(v)


@register_grid("sweep")
def sweep_grid(base: KVSmoothConfig, n_layers: int, opts) -> list[Arm]:
    """The product of the ``--axis`` values (default ``lambda_ref=0.3,0.5,0.7,0.9``). Axes ``METHOD.PARAM``
    (``vcd.alpha=0.5,1``) sweep an inference-time method's parameter: with only such axes the arms run the method
    alone, with KVSmooth axes too they run both (one method per sweep)."""
    from ..methods import MethodError
    from ..methods.arms import arm_method, split_axes

    try:
        specs, method, m_axes = split_axes(opts.axis or ["lambda_ref=0.3,0.5,0.7,0.9"])
    except MethodError as exc:
        raise GridError(str(exc)) from None
    axes = [parse_axis(a) for a in specs] + [(f"{method}.{p}", v) for p, v in m_axes]
    fields = [f for f, _ in axes]
    arms = []
    for combo in itertools.product(*[v for _, v in axes]):
        changes = dict(zip(fields, combo))
        name = _safe("-".join(f"{f}={_label(v)}" for f, v in changes.items()))
        cfg = base.updated(**{f: v for f, v in changes.items() if "." not in f}) if specs else None
        m = None
        if method is not None:
            try:
                m = arm_method(method, getattr(opts, "method_sets", None), None, cfg is not None,
                               {f.split(".", 1)[1]: v for f, v in changes.items() if "." in f})[1]
            except MethodError as exc:
                raise GridError(f"--axis: {exc}") from None
        arms.append(Arm(name, cfg, {"kind": "sweep", **{f: _label(v) for f, v in changes.items()}}, m))
    return arms


def grid_file_arms(path: str | Path) -> list[Arm]:
    """Arms of a grid file: ``arms: [{name, preset | config | base + set}]`` (YAML or JSON, strict safe loaders:
    duplicate keys, bad encodings and invalid syntax are refused naming the file)."""
    from ..core.fileio import read_data

    p = Path(path)
    data = read_data(p, "--grid-file")
    if not isinstance(data, dict) or not isinstance(data.get("arms"), list):
        raise GridError(f"--grid-file {p}: expected a mapping with a list 'arms'")
    arms = []
    for i, a in enumerate(data["arms"], 1):
        if not isinstance(a, dict) or "name" not in a:
            raise GridError(f"--grid-file {p}: arm {i} needs a 'name'")
        extra = set(a) - {"name", "preset", "config", "set", "baseline"}
        if extra:
            raise GridError(f"--grid-file {p}: arm {a['name']!r} has unknown key(s) {', '.join(sorted(extra))}")
        if a.get("set") is not None and not isinstance(a["set"], dict):
            raise GridError(f"--grid-file {p}: arm {a['name']!r}: 'set' must be a mapping of config fields to "
                            f"values (e.g. set: {{lambda_ref: 0.5}}), got {type(a['set']).__name__}")
        if a.get("baseline"):
            arms.append(Arm(_safe(str(a["name"])), None, {"kind": "baseline"}))
            continue
        cfg_path = a.get("config")
        if cfg_path is not None and not Path(cfg_path).is_absolute():
            cfg_path = p.parent / cfg_path
        cfg = KVSmoothConfig.from_source(cfg_path, a.get("preset"))
        if a.get("set"):
            cfg = cfg.updated(**a["set"])
        arms.append(Arm(_safe(str(a["name"])), cfg, {"kind": "grid-file", **{k: _label(v) for k, v in (a.get("set") or {}).items()}}))
    return arms
