"""The platform table: every figure has a source, and malformed tables are refused."""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from testbed.energy.platforms import load_platforms
from testbed.errors import ModelError

TABLE = load_platforms()
PACKAGED = yaml.safe_load(resources.files("testbed.energy").joinpath("platforms.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("entry, figure, value, source", TABLE.figures(), ids=lambda v: str(v)[:30])
def test_every_figure_has_a_source(entry, figure, value, source):
    assert isinstance(source, str) and len(source.strip()) > 10


def test_pj_per_sop_match_the_seneca_table():
    # pi2-model.md, "Energy": SENECA paper, Front. Neurosci. 2023, Table 3
    expected = {"TrueNorth": 2.5, "Loihi": 23.6, "SpiNNaker": 45.0, "SpiNNaker2": 10.0, "Tianjic": 1.54, "ODIN": 12.7}
    assert {p.name: p.pj_per_sop for p in TABLE.neuromorphic} == expected
    assert all("Table 3" in p.source for p in TABLE.neuromorphic)


def test_link_energies_lie_in_the_stated_ranges():
    ranges = {"serdes": (1.3, 1.8), "cpo": (7.0, 7.0), "pluggable": (17.0, 20.0), "ucie": (0.01, 0.6)}
    for name, (low, high) in ranges.items():
        assert low <= TABLE.link(name).pj_per_bit <= high


def test_brain_figures():
    assert TABLE.brain.neurons == pytest.approx(86e9) and TABLE.brain.power_w == pytest.approx(20.0)
    assert "Herculano-Houzel" in TABLE.brain.neurons_source


def _write(tmp_path, raw):
    path = tmp_path / "platforms.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def test_a_figure_without_source_is_refused(tmp_path):
    raw = yaml.safe_load(yaml.safe_dump(PACKAGED))
    raw["neuromorphic"][0]["source"] = " "
    with pytest.raises(ModelError, match="pj_per_sop.*has no source"):
        load_platforms(_write(tmp_path, raw))


def test_unknown_keys_and_bad_values_are_refused(tmp_path):
    raw = yaml.safe_load(yaml.safe_dump(PACKAGED))
    raw["links"][0]["pj_per_bitt"] = 1.0
    with pytest.raises(ModelError, match="pj_per_bitt"):
        load_platforms(_write(tmp_path, raw))
    raw = yaml.safe_load(yaml.safe_dump(PACKAGED))
    raw["neuromorphic"][1]["pj_per_sop"] = -1
    with pytest.raises(ModelError, match="Loihi"):
        load_platforms(_write(tmp_path, raw))
    raw = yaml.safe_load(yaml.safe_dump(PACKAGED))
    raw["generations"][0]["link"] = "smoke-signals"
    with pytest.raises(ModelError, match="smoke-signals"):
        load_platforms(_write(tmp_path, raw))


def test_the_packaged_table_round_trips_through_a_file(tmp_path):
    assert load_platforms(_write(tmp_path, PACKAGED)) == TABLE
