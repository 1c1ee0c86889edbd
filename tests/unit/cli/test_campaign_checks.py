"""`sapis campaign start` checks everything it can before any row is written: one line naming the file and the
field, exit status 2, no campaign row (and nothing else new in the store)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import ase.io
import pytest
from ase import Atoms
from ase.build import molecule

from sapis.cli import run
from sapis.storage import Store

HEAD = 'name = "checks"\npools = ["mols"]\n[level]\nmethod = "HF"\nbasis = "sto-3g"\ndensity_fit = false\n'


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'checks.db'}"


def _pool(tmp_path: Path, url: str, frames: list[Atoms]) -> None:
    path = tmp_path / "mols.extxyz"
    ase.io.write(path, frames)
    assert run(["pool", "submit", str(path), "--name", "mols", "--database-url", url]) == 0


def _start_fails(tmp_path: Path, url: str, toml: str, capsys: pytest.CaptureFixture[str]) -> str:
    cfg = tmp_path / "campaign.toml"
    cfg.write_text(toml)
    capsys.readouterr()
    assert run(["campaign", "start", str(cfg), "--database-url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert str(cfg) in err, err
    store = Store(url)
    assert store.campaigns() == []
    assert store.label_counts() == {} or sum(store.label_counts().values()) == 0
    return err


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ("[model]\nknobs = { chanels = 8 }\n", "model.chanels"),
        ("[model]\nchanels = 8\n", "model.chanels"),
        ('[model]\narchitecture = "mace"\nlmax = 2\n', "model.lmax"),
        ("[train]\nmax_epochs = 0\n", "train.max_epochs"),
        ("[explore]\ntemperatures = [300.0, -10.0]\n", "explore.temperatures"),
        ("[explore]\ntemperatures = [0.0]\n", "explore.temperatures"),
    ],
)
def test_bad_knob_or_temperature(
    tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str], section: str, field: str
) -> None:
    _pool(tmp_path, url, [molecule("H2O")])
    err = _start_fails(tmp_path, url, HEAD + section, capsys)
    assert field in err


def test_pool_element_missing_from_the_basis(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _pool(tmp_path, url, [molecule("H2O"), Atoms("Br2", positions=[[0, 0, 0], [0, 0, 2.28]])])
    err = _start_fails(tmp_path, url, HEAD.replace("sto-3g", "6-31g"), capsys)
    assert "level.basis" in err and "'6-31g'" in err and "Br" in err and "mols" in err


def test_periodic_pool(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    crystal = molecule("H2O")
    crystal.cell = [6.0, 6.0, 6.0]
    crystal.pbc = True
    _pool(tmp_path, url, [molecule("H2O"), crystal])
    err = _start_fails(tmp_path, url, HEAD, capsys)
    assert "pools" in err and "periodic" in err and "mols" in err


def test_unknown_pool(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _pool(tmp_path, url, [molecule("H2O")])
    err = _start_fails(tmp_path, url, HEAD.replace('["mols"]', '["mols", "nope"]'), capsys)
    assert "pools" in err and "nope" in err


@pytest.mark.usefixtures("prefect_harness")
def test_work_pool_mode_without_its_deployment(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from sapis.flows.label import LABEL_DEPLOYMENT

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
        # the session's server may hold one from the deploy tests
        client.delete_deployment(client.read_deployment_by_name(LABEL_DEPLOYMENT).id)
    _pool(tmp_path, url, [molecule("H2O")])
    err = _start_fails(tmp_path, url, HEAD + '[label]\nmode = "work-pool"\n', capsys)
    assert "label.mode" in err and "label-worker/sapis-dft" in err and "sapis deploy" in err


@pytest.mark.usefixtures("prefect_harness")
def test_work_pool_mode_with_its_deployment_on_another_pool(
    tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from sapis.flows.deploy import register_deployments
    from sapis.flows.label import LABEL_DEPLOYMENT

    register_deployments(dft_pool="checks-other-dft", only=[LABEL_DEPLOYMENT])
    _pool(tmp_path, url, [molecule("H2O")])
    err = _start_fails(tmp_path, url, HEAD + '[label]\nmode = "work-pool"\nwork_pool = "checks-dft"\n', capsys)
    assert "label.work_pool" in err and "'checks-other-dft'" in err and "sapis deploy --dft-pool checks-dft" in err


def test_pool_element_beyond_the_xtb_baseline(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Campaigns learn Δ to GFN2-xTB by default: an element xTB has no parameters for (Z > 86) is refused up
    front, naming the field and the way out; with baseline = "none" the same pool passes this check."""
    uh = Atoms("UH", positions=[[0, 0, 0], [0, 0, 2.0]])
    uh.info["multiplicity"] = 4  # 93 electrons: odd
    _pool(tmp_path, url, [molecule("H2O"), uh])
    head = HEAD.replace("sto-3g", "ano-rcc")
    err = _start_fails(tmp_path, url, head, capsys)
    assert "model.baseline" in err and "Z >86" in err and "pool 'mols' structure 1 (HU)" in err
    assert 'model.baseline = "none"' in err

    from sapis.flows.campaign import check_campaign
    from sapis.flows.config import CampaignConfig

    cfg = CampaignConfig.parse({**_toml(head), "model": {"baseline": "none"}})
    check_campaign(Store(url), cfg)  # no error: the basis has U and nothing else needs xTB


def _toml(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)
