"""tc profiles: how one kind of kernel realises the five π² primitives, as checked data.

A profile (``tc_profiles/<name>.yaml``) names, for each primitive (delay, gate = causality +
drop of arrivals after the K-th, timeout, loss, broadcast), a realisation ``kind``, the
capabilities it ``needs`` (names from `testbed.plan.capabilities`, as the probe reports them)
and that kind's parameters, units in the key names. It also states the delays it can realise
(``delay_range``: min_us, max_us, quantum_us) and its ``auto_rank`` for ``--profile auto``.

Every key is required and every unknown key is an error, and every key is read by the compiler
(`testbed.plan.compiler.Realisation.from_profile`; tests/plan/test_profiles.py fails for a key nothing
reads): a profile never means something its reader silently ignored. What is not a choice is not a
key: the bridges always flood like hubs (STP off, forward delay and ageing 0), the gate is always the
testbed's first-K program, and it always drops primers. A primitive may be declared ``kind: unavailable`` with a ``reason``;
such a profile is incomplete and is never selected.

The YAML files ship inside the package (testbed/tc_profiles/, package data) so a
non-editable install finds them; the repository's top-level ``tc_profiles`` is a symlink to
that directory, so there is one copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from testbed.errors import ProfileError
from testbed.plan.capabilities import CAPABILITY_NAMES, Capabilities
from testbed.plan.wire import MAX_FRAME_BYTES

PRIMITIVES = ("delay", "gate", "timeout", "loss", "broadcast")
TOP_KEYS = ("name", "description", "auto_rank", "needs", "delay_range", "primitives")
RANGE_KEYS = ("min_us", "max_us", "quantum_us")
UNAVAILABLE = "unavailable"
PROFILE_DIR = Path(__file__).resolve().parent.parent / "tc_profiles"

# What a key's unit suffix means, for errors that teach.
UNITS = {
    "_us": "microseconds", "_s": "seconds", "_bytes": "bytes", "_bps": "bits per second",
    "_pct": "percent", "_tau": "model time units (multiples of τ)", "_packets": "packets",
}


@dataclass(frozen=True)
class Param:
    """One parameter's type ('int' | 'number' | 'bool' | 'str') and inclusive bounds."""

    type: str
    low: float | None = None
    high: float | None = None

    def describe(self, key: str) -> str:
        unit = next((f" of {words}" for suffix, words in UNITS.items() if key.endswith(suffix)), "")
        kind = {"int": "an integer", "number": "a number", "bool": "true or false", "str": "a string"}[self.type]
        bounds = ""
        if self.low is not None and self.high is not None:
            bounds = f" in {self.low:g}..{self.high:g}"
        elif self.low is not None:
            bounds = f" ≥ {self.low:g}"
        note = " (the unit is in the key name: write a bare number)" if unit else ""
        return f"{kind}{unit}{bounds}{note}"

    def accepts(self, value: Any) -> bool:
        if self.type == "bool":
            return isinstance(value, bool)
        if self.type == "str":
            return isinstance(value, str) and value != ""
        wanted = int if self.type == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, wanted):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


@dataclass(frozen=True)
class KindSpec:
    """A realisation kind: the capabilities it cannot do without, and its parameters."""

    needs: frozenset[str]
    params: Mapping[str, Param]


POSITIVE_INT = Param("int", 1)
NAME = Param("str")
MARGIN = Param("number", 0)

# The realisation kinds this testbed knows, per primitive. Profiles may declare more needs than
# a kind's minimum (e.g. the links it runs on), never fewer.
KINDS: dict[str, dict[str, KindSpec]] = {
    "delay": {
        # htb class of class_rate_bps (unshaped) per synapse with a netem leaf (queue limit_packets)
        # holding each packet delay_us, a multiple of delay_range.quantum_us.
        "netem": KindSpec(frozenset({"htb", "netem", "bpf"}),
                          {"class_rate_bps": Param("int", 8), "limit_packets": POSITIVE_INT}),
        # htb class per synapse, rate = (primer − burst)·8/delay rounded to a multiple of
        # rate_quantum_bps: the spike waits behind a primer.
        "htb-primer": KindSpec(frozenset({"htb", "bpf"}),
                               {"primer_bytes": POSITIVE_INT, "burst_bytes": POSITIVE_INT,
                                "rate_quantum_bps": POSITIVE_INT}),
    },
    "gate": {
        # cls_bpf direct-action on clsact ingress, the π²_K neuron in the kernel: per (port, sample) it
        # counts the first K spikes on time, sums their kernel RX stamps after the origin, and passes
        # the K-th rewritten as one neuron event (count, sum); every other spike is dropped.
        # (A police action, conform → pass / exceed → drop, passes exactly K only from a bucket refilled per
        # sample by user space, and it has no sample id: docs/cbs-neuron.md has the measurements.)
        "bpf-first-k": KindSpec(frozenset({"clsact", "bpf"}), {}),
    },
    "timeout": {
        # the first-K gate's own time-out: it drops a spike whose kernel RX stamp is later than the
        # origin stamped in the spike (wire time_ns) + the layer's window (latest calibrated K-th
        # arrival + margin_tau·τ, but at least margin_us_min, whole µs), before counting it; the relay
        # never filters by time.
        "gate-window": KindSpec(frozenset({"clsact", "bpf"}), {"margin_tau": MARGIN, "margin_us_min": MARGIN}),
    },
    "loss": {
        "netem-loss": KindSpec(frozenset({"netem"}), {}),
        # the first-K gate program loses each spike with probability 1/N before counting it (its drop_one_in).
        "bpf-drop": KindSpec(frozenset({"clsact", "bpf"}), {}),
        # a u32 match-all filter before the gate whose gact action drops a spike with probability 1/N
        # (`pi2 compile --loss`; testbed.plan.tc drop_one_in).
        "gact-random": KindSpec(frozenset({"clsact", "u32", "gact"}), {}),
    },
    "broadcast": {
        # a Linux bridge per layer flooding like a hub; each port's copy leaves flood_copy_us after the last.
        "bridge-flood": KindSpec(frozenset({"bridge", "veth"}), {"flood_copy_us": Param("number", 0)}),
    },
}
UNAVAILABLE_SPEC = KindSpec(frozenset(), {"reason": NAME})


@dataclass(frozen=True)
class DelayRange:
    """The synapse delays a profile realises: [min_us, max_us] in steps of quantum_us."""

    min_us: float
    max_us: float
    quantum_us: float


@dataclass(frozen=True)
class PrimitiveRealisation:
    """How one π² primitive is built: `kind`, the capabilities it needs, its parameters."""

    primitive: str
    kind: str
    needs: tuple[str, ...]
    params: Mapping[str, Any]

    @property
    def available(self) -> bool:
        return self.kind != UNAVAILABLE

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "needs": list(self.needs), **self.params}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    auto_rank: int
    needs: tuple[str, ...]
    delay_range: DelayRange
    primitives: tuple[PrimitiveRealisation, ...]  # in `PRIMITIVES` order
    source: str

    def primitive(self, name: str) -> PrimitiveRealisation:
        for item in self.primitives:
            if item.primitive == name:
                return item
        raise ProfileError(f"profile {self.name}: no primitive {name!r}; expected one of {list(PRIMITIVES)}")

    @property
    def complete(self) -> bool:
        return all(p.available for p in self.primitives)

    @property
    def all_needs(self) -> tuple[str, ...]:
        """Every capability the profile needs, in first-mention order."""
        seen: dict[str, None] = dict.fromkeys(self.needs)
        for p in self.primitives:
            seen.update(dict.fromkeys(p.needs))
        return tuple(seen)

    def missing(self, capabilities: Capabilities) -> tuple[str, ...]:
        return capabilities.missing(self.all_needs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "auto_rank": self.auto_rank,
            "needs": list(self.needs),
            "delay_range": {"min_us": self.delay_range.min_us, "max_us": self.delay_range.max_us,
                            "quantum_us": self.delay_range.quantum_us},
            "primitives": {p.primitive: p.to_dict() for p in self.primitives},
        }


def _unknown_keys(where: str, raw: Mapping[str, Any], expected: Iterable[str]) -> None:
    allowed = list(expected)
    unknown = [k for k in raw if k not in allowed]
    if not unknown:
        return
    hints = []
    for key in unknown:
        stem = str(key).rsplit("_", 1)[0]
        near = [a for a in allowed if a.rsplit("_", 1)[0] == stem and "_" in a]
        if near:
            hints.append(f"{near[0]!r} for {key!r}")
    hint = f" (did you mean {', '.join(hints)}? the unit is part of the key name)" if hints else ""
    raise ProfileError(f"{where}: unknown key(s) {[str(k) for k in unknown]}; expected {allowed}{hint}")


def _missing_keys(where: str, raw: Mapping[str, Any], expected: Iterable[str]) -> None:
    missing = [k for k in expected if k not in raw]
    if missing:
        raise ProfileError(f"{where}: missing key(s) {missing}; every key is required")


def _mapping(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProfileError(f"{where}: {value!r} is not a mapping; expected 'key: value' entries")
    return value


def _needs(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileError(f"{where}: {value!r} is not a list of capability names; expected e.g. [htb, u32]")
    unknown = [v for v in value if v not in CAPABILITY_NAMES]
    if unknown:
        raise ProfileError(f"{where}: unknown capability name(s) {unknown}; expected names from {list(CAPABILITY_NAMES)}")
    return tuple(value)


def _param(where: str, key: str, value: Any, spec: Param) -> Any:
    if not spec.accepts(value):
        raise ProfileError(f"{where}.{key}: {value!r} is not {spec.describe(key)}")
    return value


def _primitive(source: str, primitive: str, raw: Any) -> PrimitiveRealisation:
    where = f"{source}: primitives.{primitive}"
    raw = _mapping(where, raw)
    kinds = KINDS[primitive]
    kind = raw.get("kind")
    if kind != UNAVAILABLE and kind not in kinds:
        raise ProfileError(f"{where}.kind: {kind!r} is not a known realisation; expected one of {[*kinds, UNAVAILABLE]}")
    spec = UNAVAILABLE_SPEC if kind == UNAVAILABLE else kinds[kind]
    keys = ["kind", "needs", *spec.params]
    _unknown_keys(where, raw, keys)
    _missing_keys(where, raw, keys)
    needs = _needs(f"{where}.needs", raw["needs"])
    lacking = sorted(spec.needs - set(needs))
    if lacking:
        raise ProfileError(f"{where}.needs: {list(needs)} omits {lacking}, which kind {kind!r} cannot do without")
    if kind == UNAVAILABLE and needs:
        raise ProfileError(f"{where}.needs: {list(needs)}; an unavailable primitive needs nothing, write []")
    params = {key: _param(where, key, raw[key], p) for key, p in spec.params.items()}
    return PrimitiveRealisation(primitive, kind, needs, params)


def _check_together(source: str, delay_range: DelayRange, parts: Mapping[str, PrimitiveRealisation]) -> None:
    """Constraints between primitives and against the declared delay range."""
    delay, loss = parts["delay"], parts["loss"]
    if loss.kind == "netem-loss" and delay.kind != "netem":
        raise ProfileError(f"{source}: primitives.loss.kind 'netem-loss' drops in the delay's netem leaf, but "
                           f"delay.kind is {delay.kind!r}; use loss.kind 'bpf-drop' or 'gact-random'")
    if delay.kind == "netem" and delay_range.quantum_us < 1:
        raise ProfileError(f"{source}: delay_range.quantum_us: {delay_range.quantum_us!r} is below netem's "
                           "whole-µs resolution; expected ≥ 1")
    if delay.kind == "htb-primer":
        p = delay.params
        if not p["burst_bytes"] < p["primer_bytes"] <= MAX_FRAME_BYTES:
            raise ProfileError(f"{source}: primitives.delay: need burst_bytes < primer_bytes ≤ {MAX_FRAME_BYTES} (a "
                               f"full frame on a 1500-byte-MTU veth), got {p['burst_bytes']}, {p['primer_bytes']}")
        if p["rate_quantum_bps"] % 8:
            raise ProfileError(f"{source}: primitives.delay.rate_quantum_bps: {p['rate_quantum_bps']!r} is not whole "
                               "bytes per second, which is what htb takes; expected a multiple of 8")
        # d = (P − b)·8e6/r µs, so one rate step Δr moves d by d²·Δr/((P − b)·8e6).
        step_us = delay_range.max_us ** 2 * p["rate_quantum_bps"] / ((p["primer_bytes"] - p["burst_bytes"]) * 8e6)
        if step_us > delay_range.quantum_us:
            raise ProfileError(f"{source}: delay_range.max_us: {delay_range.max_us!r} needs a rate step of "
                               f"{step_us:.3g} µs > quantum_us {delay_range.quantum_us}; lower max_us or raise quantum_us")


def parse_profile(raw: Any, source: str) -> Profile:
    """Validate one profile's parsed YAML; `source` names it in errors."""
    raw = _mapping(source, raw)
    _unknown_keys(source, raw, TOP_KEYS)
    _missing_keys(source, raw, TOP_KEYS)
    name = _param(source, "name", raw["name"], NAME)
    description = _param(source, "description", raw["description"], NAME)
    auto_rank = _param(source, "auto_rank", raw["auto_rank"], POSITIVE_INT)
    needs = _needs(f"{source}: needs", raw["needs"])
    rng = _mapping(f"{source}: delay_range", raw["delay_range"])
    _unknown_keys(f"{source}: delay_range", rng, RANGE_KEYS)
    _missing_keys(f"{source}: delay_range", rng, RANGE_KEYS)
    delay_range = DelayRange(*(_param(f"{source}: delay_range", k, rng[k], Param("number", 0)) for k in RANGE_KEYS))
    if delay_range.quantum_us <= 0 or delay_range.min_us > delay_range.max_us:
        raise ProfileError(f"{source}: delay_range {dict(rng)}: expected 0 ≤ min_us ≤ max_us and quantum_us > 0")
    prims = _mapping(f"{source}: primitives", raw["primitives"])
    _unknown_keys(f"{source}: primitives", prims, PRIMITIVES)
    _missing_keys(f"{source}: primitives", prims, PRIMITIVES)
    parts = {p: _primitive(source, p, prims[p]) for p in PRIMITIVES}
    if all(part.available for part in parts.values()):
        _check_together(source, delay_range, parts)
    return Profile(name, description, auto_rank, needs, delay_range, tuple(parts.values()), source)


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name (``netem``), or any profile file by path (``my.yaml``)."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or "/" in text:
        path = Path(name_or_path)
    else:
        path = PROFILE_DIR / f"{text}.yaml"
        if not path.is_file():
            raise ProfileError(f"tc profile {text!r} not found in {PROFILE_DIR}; expected one of {profile_names()} "
                               "or a path to a .yaml file")
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ProfileError(f"tc profile {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ProfileError(f"tc profile {path}: not UTF-8 text; a profile is a YAML file like "
                           f"{PROFILE_DIR / 'shaper.yaml'}") from None
    except RecursionError:
        raise ProfileError(f"tc profile {path}: nested too deeply to be a profile") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ProfileError(f"tc profile {path}: not valid YAML{at} ({getattr(exc, 'problem', exc)})") from None
    profile = parse_profile(raw, str(path))
    if profile.name != path.stem:
        raise ProfileError(f"{path}: name: {profile.name!r} differs from the file name; expected {path.stem!r}")
    return profile


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def shipped_profiles() -> tuple[Profile, ...]:
    """Every profile in the package's tc_profiles directory, in `auto` order (rank, then name)."""
    return tuple(sorted((load_profile(n) for n in profile_names()), key=lambda p: (p.auto_rank, p.name)))


def select_profile(capabilities: Capabilities, requested: str | Path = "auto",
                   profiles: Iterable[Profile] | None = None) -> Profile:
    """The profile to build with: `requested` by name/path, or with "auto" the first complete one that fits.

    `profiles` (default: the shipped ones) are tried in `auto_rank` order.
    """
    if str(requested) != "auto":
        profile = load_profile(requested)
        gaps = [p.primitive for p in profile.primitives if not p.available]
        if gaps:
            raise ProfileError(f"tc profile {profile.name}: primitive(s) {gaps} declared unavailable; pick another profile")
        lacking = profile.missing(capabilities)
        if lacking:
            raise ProfileError(f"tc profile {profile.name} needs {list(lacking)}, which kernel "
                               f"{capabilities.kernel_release} lacks (`sudo pi2 doctor` shows what it has)")
        return profile
    candidates = sorted(shipped_profiles() if profiles is None else profiles, key=lambda p: (p.auto_rank, p.name))
    reasons = []
    for profile in candidates:
        lacking = profile.missing(capabilities)
        if profile.complete and not lacking:
            return profile
        reasons.append(f"{profile.name} lacks {list(lacking)}" if lacking else f"{profile.name} is incomplete")
    raise ProfileError(f"no tc profile fits kernel {capabilities.kernel_release}: {'; '.join(reasons) or 'no profiles'}")


@dataclass(frozen=True)
class RealisationSupport:
    """Whether this machine can build one realisation kind of one primitive."""

    primitive: str
    kind: str
    needs: tuple[str, ...]
    missing: tuple[str, ...]
    profiles: tuple[str, ...]  # the profiles that use it

    @property
    def supported(self) -> bool:
        return not self.missing


def primitive_support(capabilities: Capabilities, profiles: Iterable[Profile]) -> tuple[RealisationSupport, ...]:
    """Per primitive, each realisation kind the `profiles` use, and what this machine lacks for it."""
    seen: dict[tuple[str, str], tuple[dict[str, None], list[str]]] = {}
    for profile in profiles:
        for part in profile.primitives:
            if not part.available:
                continue
            needs, users = seen.setdefault((part.primitive, part.kind), ({}, []))
            needs.update(dict.fromkeys(part.needs))
            users.append(profile.name)
    rows = [RealisationSupport(prim, kind, tuple(needs), capabilities.missing(needs), tuple(users))
            for (prim, kind), (needs, users) in seen.items()]
    return tuple(sorted(rows, key=lambda r: PRIMITIVES.index(r.primitive)))


@dataclass(frozen=True)
class Diagnosis:
    """What `pi2 doctor` reports: the capabilities, what they allow, and the `auto` choice."""

    capabilities: Capabilities
    support: tuple[RealisationSupport, ...]
    profiles: tuple[Profile, ...]
    selected: Profile | None
    problem: str | None  # why nothing was selected

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.capabilities.to_dict(),
            "primitives": [{"primitive": r.primitive, "kind": r.kind, "supported": r.supported, "needs": list(r.needs),
                            "missing": list(r.missing), "profiles": list(r.profiles)} for r in self.support],
            "profiles": {p.name: {"fits": p.complete and not p.missing(self.capabilities),
                                  "missing": list(p.missing(self.capabilities))} for p in self.profiles},
            "auto": None if self.selected is None else self.selected.name,
            "problem": self.problem,
        }


def diagnose(capabilities: Capabilities) -> Diagnosis:
    """Judge probed `capabilities` against the shipped profiles (no kernel access)."""
    profiles = shipped_profiles()
    support = primitive_support(capabilities, profiles)
    try:
        return Diagnosis(capabilities, support, profiles, select_profile(capabilities, "auto", profiles), None)
    except ProfileError as exc:
        return Diagnosis(capabilities, support, profiles, None, str(exc))
