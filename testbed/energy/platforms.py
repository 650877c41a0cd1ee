"""The platform table: published and assumed figures, each with its source, read from YAML.

`platforms.yaml` (shipped with the package) holds energy per synaptic operation of conventional
neuromorphic chips, link technologies (pJ/bit, line rate), π² fabric generations (link, packet,
switch energy per packet copy, fixed power per port), the AER header, the fabric shape and the
brain. Each dataclass names, for every figure, the key that must hold its source, and loading
fails if a figure has none: a number without a source is not allowed into the model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Mapping

import yaml

from testbed.errors import ModelError

PACKETS = ("frame", "aer")


def _check_positive(where: str, **values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ModelError(f"{where}: {name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class Neuromorphic:
    """A conventional neuromorphic processor: pJ per synaptic operation and neurons per chip."""

    name: str
    pj_per_sop: float
    source: str
    neurons_per_chip: int
    neurons_source: str

    SOURCES: ClassVar[Mapping[str, str]] = {"pj_per_sop": "source", "neurons_per_chip": "neurons_source"}

    def __post_init__(self) -> None:
        _check_positive(f"platform {self.name}", pj_per_sop=self.pj_per_sop, neurons_per_chip=self.neurons_per_chip)


@dataclass(frozen=True)
class LinkTech:
    """A link technology: end-to-end energy per bit and one port's line rate."""

    name: str
    pj_per_bit: float
    pj_per_bit_range: tuple[float, float]
    source: str
    bandwidth_gbps: float
    bandwidth_source: str

    SOURCES: ClassVar[Mapping[str, str]] = {"pj_per_bit": "source", "pj_per_bit_range": "source",
                                            "bandwidth_gbps": "bandwidth_source"}

    def __post_init__(self) -> None:
        _check_positive(f"link {self.name}", pj_per_bit=self.pj_per_bit, bandwidth_gbps=self.bandwidth_gbps)
        low, high = self.pj_per_bit_range
        if not 0 < low <= self.pj_per_bit <= high:
            raise ModelError(f"link {self.name}: pj_per_bit {self.pj_per_bit} must lie in its range [{low}, {high}]")


@dataclass(frozen=True)
class Generation:
    """A π² fabric generation: which link and packet, switch pJ per packet copy, fixed W per port."""

    name: str
    link: str
    packet: str
    switch_pj_per_packet: float
    switch_source: str
    static_w_per_port: float
    static_source: str

    SOURCES: ClassVar[Mapping[str, str]] = {"switch_pj_per_packet": "switch_source",
                                            "static_w_per_port": "static_source"}

    def __post_init__(self) -> None:
        if self.packet not in PACKETS:
            raise ModelError(f"generation {self.name}: packet must be one of {PACKETS}, got {self.packet!r}")
        if self.switch_pj_per_packet < 0 or self.static_w_per_port < 0:
            raise ModelError(f"generation {self.name}: switch_pj_per_packet and static_w_per_port must be ≥ 0")


@dataclass(frozen=True)
class Packets:
    """The minimal address-event packet's header (its address bits depend on the workload)."""

    aer_header_bits: int
    aer_header_source: str

    SOURCES: ClassVar[Mapping[str, str]] = {"aer_header_bits": "aer_header_source"}

    def __post_init__(self) -> None:
        if self.aer_header_bits < 0:
            raise ModelError(f"packets: aer_header_bits must be ≥ 0, got {self.aer_header_bits}")


@dataclass(frozen=True)
class FabricShape:
    """Switch radix of the multicast trees and the ports' mean utilisation."""

    switch_radix: int
    switch_radix_source: str
    utilisation: float
    utilisation_source: str

    SOURCES: ClassVar[Mapping[str, str]] = {"switch_radix": "switch_radix_source",
                                            "utilisation": "utilisation_source"}

    def __post_init__(self) -> None:
        if self.switch_radix < 2:
            raise ModelError(f"fabric: switch_radix must be ≥ 2, got {self.switch_radix}")
        if not 0 < self.utilisation <= 1:
            raise ModelError(f"fabric: utilisation must be in (0, 1], got {self.utilisation}")


@dataclass(frozen=True)
class BrainFigures:
    """The human brain: neurons, synapses per neuron, mean firing rate, power."""

    neurons: float
    neurons_source: str
    synapses_per_neuron: float
    synapses_source: str
    rate_hz: float
    rate_source: str
    rate_range_hz: tuple[float, float]
    power_w: float
    power_source: str

    SOURCES: ClassVar[Mapping[str, str]] = {"neurons": "neurons_source", "synapses_per_neuron": "synapses_source",
                                            "rate_hz": "rate_source", "rate_range_hz": "rate_source",
                                            "power_w": "power_source"}

    def __post_init__(self) -> None:
        _check_positive("brain", neurons=self.neurons, synapses_per_neuron=self.synapses_per_neuron,
                        rate_hz=self.rate_hz, power_w=self.power_w)


@dataclass(frozen=True)
class PlatformTable:
    """Everything in platforms.yaml, checked."""

    neuromorphic: tuple[Neuromorphic, ...]
    links: Mapping[str, LinkTech]
    generations: Mapping[str, Generation]
    packets: Packets
    fabric: FabricShape
    brain: BrainFigures

    def link(self, name: str) -> LinkTech:
        if name not in self.links:
            raise ModelError(f"unknown link technology {name!r}; expected one of {sorted(self.links)}")
        return self.links[name]

    def generation(self, name: str) -> Generation:
        if name not in self.generations:
            raise ModelError(f"unknown fabric generation {name!r}; expected one of {list(self.generations)}")
        return self.generations[name]

    def figures(self) -> list[tuple[str, str, Any, str]]:
        """Every figure as (entry, field, value, source): what tests and `--json` audit."""
        entries: list[Any] = [*self.neuromorphic, *self.links.values(), *self.generations.values(),
                              self.packets, self.fabric, self.brain]
        out = []
        for entry in entries:
            label = getattr(entry, "name", type(entry).__name__)
            for figure, source in entry.SOURCES.items():
                out.append((label, figure, getattr(entry, figure), getattr(entry, source)))
        return out


def _build(cls: type, raw: Any, where: str) -> Any:
    """One dataclass from a YAML mapping; unknown or missing keys and empty sources are errors."""
    if not isinstance(raw, Mapping):
        raise ModelError(f"{where}: expected a mapping, got {type(raw).__name__}")
    names = {f.name for f in fields(cls)}
    unknown, missing = set(raw) - names, names - set(raw)
    if unknown or missing:
        raise ModelError(f"{where}: unknown key(s) {sorted(unknown)}, missing key(s) {sorted(missing)}; "
                         f"expected exactly {sorted(names)}")
    for figure, source in cls.SOURCES.items():
        if not isinstance(raw[source], str) or not raw[source].strip():
            raise ModelError(f"{where}: figure {figure!r} has no source; set {source!r} to a citation or 'assumption: …'")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return cls(**values)


def load_platforms(path: str | Path | None = None) -> PlatformTable:
    """Read the platform table (the packaged platforms.yaml unless `path` is given)."""
    if path is None:
        text = resources.files("testbed.energy").joinpath("platforms.yaml").read_text(encoding="utf-8")
        where = "platforms.yaml"
    else:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelError(f"platform table {where}: cannot read ({exc.strerror})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelError(f"platform table {where}: not valid YAML ({exc})") from exc
    sections = {"neuromorphic", "links", "generations", "packets", "fabric", "brain"}
    if not isinstance(raw, Mapping) or set(raw) != sections:
        got = sorted(raw) if isinstance(raw, Mapping) else type(raw).__name__
        raise ModelError(f"platform table {where}: expected sections {sorted(sections)}, got {got}")
    links = {r["name"]: _build(LinkTech, r, f"{where}: links[{i}]") for i, r in enumerate(raw["links"])}
    gens = {r["name"]: _build(Generation, r, f"{where}: generations[{i}]") for i, r in enumerate(raw["generations"])}
    for gen in gens.values():
        if gen.link not in links:
            raise ModelError(f"{where}: generation {gen.name} uses unknown link {gen.link!r}; expected one of {sorted(links)}")
    return PlatformTable(
        neuromorphic=tuple(_build(Neuromorphic, r, f"{where}: neuromorphic[{i}]") for i, r in enumerate(raw["neuromorphic"])),
        links=links,
        generations=gens,
        packets=_build(Packets, raw["packets"], f"{where}: packets"),
        fabric=_build(FabricShape, raw["fabric"], f"{where}: fabric"),
        brain=_build(BrainFigures, raw["brain"], f"{where}: brain"),
    )
