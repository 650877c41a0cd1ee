"""tc profiles: every shipped YAML loads, every malformation is a one-line ProfileError, selection by capability."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed.errors import ProfileError
from testbed.plan.capabilities import CAPABILITY_NAMES, Capabilities, Capability
from testbed.plan.compiler import Realisation
from testbed.plan.profiles import (KINDS, PRIMITIVES, PROFILE_DIR, load_profile, parse_profile, primitive_support,
                                   select_profile, shipped_profiles)

REPO_PROFILES = Path(__file__).resolve().parents[2] / "tc_profiles"
# This project's host kernel as kernel-notes.md describes it (no netem, gact, police).
HOST = {"tbf", "htb", "pfifo", "bfifo", "clsact", "ingress", "u32", "bpf", "mirred", "bridge", "veth", "ifb", "netns"}
STANDARD = HOST | {"netem", "fq", "fq_codel", "prio", "gact", "police", "flower", "matchall", "cbs", "etf"}


def caps(names: set[str]) -> Capabilities:
    return Capabilities.from_available(names, "test")


def raw_profile(name: str = "shaper") -> dict:
    return yaml.safe_load((PROFILE_DIR / f"{name}.yaml").read_text())


def error_of(raw: dict) -> str:
    with pytest.raises(ProfileError) as info:
        parse_profile(raw, "t.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("t.yaml")
    return message


@pytest.mark.parametrize("path", sorted(REPO_PROFILES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_repo_profile_loads(path: Path) -> None:
    profile = load_profile(path)
    assert profile.name == path.stem
    assert [p.primitive for p in profile.primitives] == list(PRIMITIVES)
    assert set(profile.all_needs) <= set(CAPABILITY_NAMES)


def test_repo_dir_is_the_packaged_dir() -> None:
    # one source of truth: the top-level tc_profiles is the package's directory
    assert REPO_PROFILES.resolve() == PROFILE_DIR
    assert {p.name for p in shipped_profiles()} >= {"netem", "shaper", "full"}


def test_profile_by_name_and_path_agree() -> None:
    assert load_profile("netem") == load_profile(PROFILE_DIR / "netem.yaml")


class ReadKeys(dict):
    """A primitive's parameters that remember which keys were read."""

    def __init__(self, raw: dict) -> None:
        super().__init__(raw)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


class ReadAttributes:
    """A delay range that remembers which fields were read."""

    def __init__(self, wrapped: object) -> None:
        self.wrapped, self.read = wrapped, set()

    def __getattr__(self, name: str) -> Any:
        self.read.add(name)
        return getattr(self.wrapped, name)


@pytest.mark.parametrize("name", [p.name for p in shipped_profiles()])
def test_the_compiler_reads_every_key_a_profile_declares(name: str) -> None:
    """profiles.py promises a profile never says something its reader ignores: the compiler's
    reader (Realisation.from_profile) must read every kind parameter and delay_range field."""
    profile = load_profile(name)
    parts = tuple(replace(p, params=ReadKeys(dict(p.params))) for p in profile.primitives)
    rng = ReadAttributes(profile.delay_range)
    Realisation.from_profile(replace(profile, primitives=parts, delay_range=rng))
    unread = [f"primitives.{p.primitive}.{key}" for p in parts for key in p.params if key not in p.params.read]
    unread += [f"delay_range.{key}" for key in ("min_us", "max_us", "quantum_us") if key not in rng.read]
    assert unread == []


def test_every_kind_is_used_by_a_shipped_profile() -> None:
    """So the test above sees every kind's parameters (a kind no profile uses would go unchecked)."""
    used = {(p.primitive, p.kind) for profile in shipped_profiles() for p in profile.primitives}
    assert {(primitive, kind) for primitive, kinds in KINDS.items() for kind in kinds} <= used


def test_kinds_declare_their_minimum_needs() -> None:
    shaper = load_profile("shaper")
    assert shaper.primitive("delay").kind == "htb-primer"
    assert shaper.primitive("loss").kind == "bpf-drop"
    assert "netem" not in shaper.all_needs
    assert "netem" in load_profile("netem").all_needs
    for part in shaper.primitives:
        assert KINDS[part.primitive][part.kind].needs <= set(part.needs)


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda r: r.update(colour="blue"), "unknown key(s) ['colour']"),
        (lambda r: r["primitives"]["delay"].update(jitter_us=3), "primitives.delay: unknown key(s) ['jitter_us']"),
        (lambda r: r["primitives"].pop("broadcast"), "missing key(s) ['broadcast']"),
        (lambda r: r["primitives"]["timeout"].pop("margin_tau"), "missing key(s) ['margin_tau']"),
        (lambda r: r["delay_range"].update(max_us="30ms"), "delay_range.max_us: '30ms' is not a number of microseconds"),
        (lambda r: r["delay_range"].update(max_ms=30, max_us=None) or r["delay_range"].pop("max_us"),
         "did you mean 'max_us' for 'max_ms'? the unit is part of the key name"),
        (lambda r: r["primitives"]["delay"].update(primer_bytes="1.5KB"), "primer_bytes: '1.5KB' is not an integer of bytes"),
        (lambda r: r["primitives"]["broadcast"].update(flood_copy_us="4us"),
         "flood_copy_us: '4us' is not a number of microseconds"),
        (lambda r: r["primitives"]["delay"].update(kind="wormhole"), "'wormhole' is not a known realisation"),
        (lambda r: r["primitives"]["delay"].update(needs=["htb"]), "omits ['bpf']"),
        (lambda r: r["needs"].append("warp"), "unknown capability name(s) ['warp']"),
        (lambda r: r["primitives"]["delay"].update(rate_quantum_bps=4), "expected a multiple of 8"),
        (lambda r: r["primitives"]["delay"].update(primer_bytes=9000), "burst_bytes < primer_bytes ≤ 1514"),
        (lambda r: r["delay_range"].update(max_us=600000), "rate step"),
        (lambda r: r["primitives"]["loss"].update(kind="netem-loss", needs=["netem"]),
         "'netem-loss' drops in the delay's netem leaf"),
    ],
    ids=["top-key", "param-key", "missing-primitive", "missing-param", "unit-in-value", "unit-in-key", "bytes-unit",
         "us-unit", "kind", "needs-too-few", "capability-name", "rate-quantum", "frame", "quantum", "netem-loss"],
)
def test_validation_errors_are_one_line(mutate, words: str) -> None:
    raw = copy.deepcopy(raw_profile("shaper"))
    mutate(raw)
    assert words in error_of(raw)


def test_name_must_match_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(raw_profile("netem")))
    with pytest.raises(ProfileError, match=r"name: 'netem' differs from the file name; expected 'mine'"):
        load_profile(path)


def test_unknown_name_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"'nosuch' not found .* expected one of \['full', 'netem', 'shaper'"):
        load_profile("nosuch")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match=r"not valid YAML at line 2"):
        load_profile(bad)


def test_auto_prefers_netem_then_shaper() -> None:
    assert select_profile(caps(STANDARD)).name == "netem"
    assert select_profile(caps(HOST)).name == "shaper"


def test_auto_skips_a_profile_whose_needs_are_unmet() -> None:
    # no netem: the shaper's primer delays; no bridge: nothing floods
    assert select_profile(caps(STANDARD - {"netem"})).name == "shaper"
    with pytest.raises(ProfileError, match=r"netem lacks \['bridge'\]; shaper lacks \['bridge'\]; full lacks \['bridge'\]"):
        select_profile(caps(STANDARD - {"bridge"}))
    with pytest.raises(ProfileError) as info:
        select_profile(caps(HOST - {"bpf"}))
    message = str(info.value)
    assert "\n" not in message
    assert "no tc profile fits kernel test" in message
    assert "shaper lacks ['bpf']" in message and "netem lacks ['netem', 'bpf']" in message


def test_requested_profile_by_name() -> None:
    assert select_profile(caps(STANDARD), "shaper").name == "shaper"
    assert select_profile(caps(STANDARD), "full").name == "full"
    with pytest.raises(ProfileError, match=r"tc profile full needs \['netem', 'gact'\], which kernel test lacks"):
        select_profile(caps(HOST), "full")
    assert select_profile(caps(STANDARD - {"police", "cbs", "mirred"}), "full").name == "full"


def test_incomplete_profile_is_never_chosen() -> None:
    raw = copy.deepcopy(raw_profile("shaper"))
    raw["auto_rank"] = 1
    raw["primitives"]["loss"] = {"kind": "unavailable", "needs": [], "reason": "no bpf drop program"}
    incomplete = parse_profile(raw, "t.yaml")
    assert not incomplete.complete
    shaper = load_profile("shaper")
    assert select_profile(caps(HOST), "auto", [incomplete, shaper]) is shaper
    with pytest.raises(ProfileError, match=r"shaper is incomplete"):
        select_profile(caps(HOST), "auto", [incomplete])


def test_primitive_support_reports_what_is_missing() -> None:
    rows = {(r.primitive, r.kind): r for r in primitive_support(caps(HOST), shipped_profiles())}
    assert rows[("delay", "netem")].missing == ("netem",)
    assert rows[("delay", "htb-primer")].supported
    assert rows[("loss", "gact-random")].missing == ("gact",)
    assert rows[("gate", "bpf-first-k")].supported
    assert rows[("broadcast", "bridge-flood")].profiles == ("netem", "shaper", "full")


def test_every_declared_kind_is_one_the_builders_realise() -> None:
    """No profile may declare a realisation nothing builds: per primitive, the kinds the compiler
    emits trees for (loss: the compiler refuses the other kinds with a PlanError naming them)."""
    built = {"delay": {"netem", "htb-primer"}, "gate": {"bpf-first-k"}, "timeout": {"gate-window"},
             "broadcast": {"bridge-flood"}}
    assert {p: set(kinds) for p, kinds in KINDS.items() if p != "loss"} == built
    full = load_profile("full")
    assert {p.primitive: p.kind for p in full.primitives} == {
        "delay": "netem", "gate": "bpf-first-k", "timeout": "gate-window", "loss": "gact-random",
        "broadcast": "bridge-flood"}


def test_capabilities_round_trip_and_validate() -> None:
    c = caps(HOST)
    assert Capabilities.from_dict(c.to_dict()) == c
    with pytest.raises(ProfileError, match=r"not probed \['netem'"):
        Capabilities("k", tuple(i for i in c.items if i.name != "netem"))
    with pytest.raises(ProfileError, match=r"capability 'sfq' is unknown"):
        Capability("sfq", True)
