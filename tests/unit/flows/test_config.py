from __future__ import annotations

from pathlib import Path

import pytest

from sapis.errors import ConfigError
from sapis.flows.config import CampaignConfig


def test_defaults_and_roundtrip(tmp_path: Path) -> None:
    cfg = CampaignConfig(name="x", pools=["p"])
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    again = CampaignConfig.load(path)
    assert again == cfg
    assert again.level.method == "PBE"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('name = "x"\npools = ["p"]\n[select]\nkk = 3\n', "select.kk"),
        ('name = "x"\npools = []\n', "pools"),
        ('name = "x"\npools = ["p"]\n[select]\nwindow_lo = 3.0\nwindow_hi = 1.0\n', "window_lo"),
        ('name = "x"\npools = ["p"]\n[level]\nmethod = "NOT-A-FUNCTIONAL"\nbasis = "sto-3g"\n', "level"),
        ('name = "x"\npools = ["p"\n', "not valid TOML"),
        ('name = "x"\npools = ["p"]\n[train]\nwarm_start_readout = false\n', "ensemble.pretrained"),
        ('name = "x"\npools = ["p"]\n[explore]\ncommittee_temperatures = [1200.0, -5.0]\n', "committee_temperatures"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        CampaignConfig.load(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and needle in msg and "\n" not in msg


def test_committee_md_runs_at_its_own_temperatures() -> None:
    cfg = CampaignConfig.parse(
        {"name": "x", "pools": ["p"], "explore": {"temperatures": [300.0], "committee_temperatures": [600.0, 1200.0]}}
    )
    kw = {"seed": 1, "round_index": 2, "trust_hi": 2.0}
    assert cfg.explore.for_explorer("committee", **kw).temperatures == [600.0, 1200.0]
    assert cfg.explore.for_explorer("xtb", **kw).temperatures == [300.0]
    plain = CampaignConfig.parse({"name": "x", "pools": ["p"], "explore": {"temperatures": [300.0]}})
    assert plain.explore.for_explorer("committee", **kw).temperatures == [300.0]


def test_demo_config_is_valid() -> None:
    from importlib.resources import files

    cfg = CampaignConfig.load(str(files("sapis.flows") / "demo.toml"))
    assert cfg.pools == ["demo-molecules"] and cfg.ensemble.members >= 2


def test_campaigns_learn_delta_to_xtb_by_default() -> None:
    """The benchmark's best prior is the campaign default for both architectures; an explicit choice wins."""
    from sapis.flows.config import CAMPAIGN_BASELINE, CampaignConfig

    assert CAMPAIGN_BASELINE == "gfn2-xtb"
    assert CampaignConfig(name="c", pools=["p"]).model.baseline == "gfn2-xtb"
    assert CampaignConfig.parse({"name": "c", "pools": ["p"], "model": {"size": "XS"}}).model.baseline == "gfn2-xtb"
    mace = CampaignConfig.parse({"name": "c", "pools": ["p"], "model": {"architecture": "mace"}})
    assert mace.model.baseline == "gfn2-xtb"
    none = CampaignConfig.parse({"name": "c", "pools": ["p"], "model": {"baseline": "none"}})
    assert none.model.baseline == "none"
    stored = none.model_dump(mode="json")  # a stored campaign keeps what it was created with
    assert CampaignConfig.parse(stored).model.baseline == "none"


def test_xtb_labelled_campaigns_learn_their_labels_directly() -> None:
    """Δ to GFN2-xTB of GFN2-xTB labels is zero: a campaign labelled by xTB gets no baseline unless it asks."""
    from sapis.flows.config import CampaignConfig

    base = {"name": "c", "pools": ["p"], "level": {"method": "gfn2-xtb"}}
    assert CampaignConfig.parse(base).model.baseline == "none"
    assert CampaignConfig.parse({**base, "model": {"size": "XS"}}).model.baseline == "none"
    asked = CampaignConfig.parse({**base, "model": {"baseline": "gfn2-xtb"}})
    assert asked.model.baseline == "gfn2-xtb"
    assert CampaignConfig.parse(asked.model_dump(mode="json")).model.baseline == "gfn2-xtb"
