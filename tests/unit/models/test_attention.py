"""Attention export: weights per layer/head/edge, the bonded share, the plot and `sapis model attention`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.io import write

from sapis.cli import run
from sapis.errors import ConfigError
from sapis.models.attention import attention_weights
from sapis.models.checkpoint import build_model, save_checkpoint

SPEC = {
    "architecture": "sapis",
    "config": {"channels": 4, "layers": 2, "lmax": 1, "heads": 2, "cutoff": 4.0, "correlation": 2},
    "elements": [1, 6, 8],
}


def test_weights_are_a_sub_stochastic_softmax_and_shares_are_consistent() -> None:
    torch.manual_seed(0)
    atoms = molecule("CH3CH2OH")
    res = attention_weights(build_model(SPEC), atoms)
    alpha = np.asarray(res["alpha"])  # (L, E, H)
    recv = np.asarray(res["edges"]["receiver"])
    assert alpha.shape == (2, len(recv), 2) and np.all(alpha > 0)
    for i in range(len(atoms)):  # the null slot keeps every atom's weights below one
        assert np.all(alpha[:, recv == i].sum(axis=1) < 1)
    bonded = np.asarray(res["bonded"])
    assert bonded.sum() == 2 * 8  # ethanol: 8 covalent bonds, both directions
    assert res["expected_bonded_share"] == pytest.approx(bonded.mean())
    assert res["bonded_share"] == pytest.approx(alpha[:, bonded].sum() / alpha.sum())


def test_mace_has_no_attention() -> None:
    mace = {"architecture": "mace", "config": {"channels": 4, "max_ell": 1, "radial_mlp": [4]}, "elements": [1, 6, 8]}
    with pytest.raises(ConfigError, match="only for the sapis transformer"):
        attention_weights(build_model(mace), molecule("H2O"))


def test_cli_writes_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = build_model(SPEC)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, SPEC, model.state_dict(), model.state_dict(), {})
    xyz = tmp_path / "ethanol.xyz"
    write(xyz, molecule("CH3CH2OH"))
    out = tmp_path / "att"
    assert run(["model", "attention", "--model", str(ckpt), "--structure", str(xyz), "--out", str(out)]) == 0
    assert "attention on covalently bonded pairs" in capsys.readouterr().out
    assert json.loads((out / "attention.json").read_text())["bond_rule"]
    assert (out / "attention.png").stat().st_size > 10_000
    rc = run(["model", "attention", "--model", str(ckpt), "--structure", str(xyz), "--out", str(out), "--frame", "3"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "has no frame 3" in err and len(err.splitlines()) == 1
    for bad_out, problem in ((xyz, "--out is a file; give a directory"), (xyz / "att", "is a file, not a directory")):
        rc = run(["model", "attention", "--model", str(ckpt), "--structure", str(xyz), "--out", str(bad_out)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and problem in err and len(err.splitlines()) == 1, err
    write(xyz, molecule("CH3SH"))
    rc = run(["model", "attention", "--model", str(ckpt), "--structure", str(xyz), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.endswith("element S is unknown to the model (trained on H, C, O)"), err


def test_a_model_without_attention_has_no_keys_and_no_weights_to_export() -> None:
    spec = {**SPEC, "config": {**SPEC["config"], "attention": False}}
    model = build_model(spec)
    with_attention = build_model(SPEC)
    # the key columns and the logit vectors are gone; every other tensor keeps its name and shape
    dropped = {k for k, v in with_attention.state_dict().items() if model.state_dict().get(k, v).shape != v.shape}
    dropped |= set(with_attention.state_dict()) - set(model.state_dict())
    assert dropped and all(".lin_msg." in k or k.endswith(".attn_vec") for k in dropped)
    with pytest.raises(ConfigError, match="attention = false"):
        attention_weights(model, molecule("H2O"))


@pytest.mark.parametrize(
    "atoms",
    [Atoms("H"), Atoms("H2", positions=[[0, 0, 0], [20, 0, 0]])],
    ids=["one atom", "20 Å apart"],
)
def test_no_pairs_within_the_cutoff_give_empty_edges_and_no_share(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], atoms: Atoms
) -> None:
    model = build_model(SPEC)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, SPEC, model.state_dict(), model.state_dict(), {})
    xyz = tmp_path / "lonely.xyz"
    write(xyz, atoms)
    out = tmp_path / "att"
    assert run(["model", "attention", "--model", str(ckpt), "--structure", str(xyz), "--out", str(out)]) == 0
    assert "no atom pairs within the model's 4 Å cutoff" in capsys.readouterr().out
    res = json.loads((out / "attention.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert res["edges"]["sender"] == [] and res["bonded_share"] is None and res["bonded_share_per_layer"] == [None] * 2
    assert (out / "attention.png").stat().st_size > 1000
    assert sorted(p.name for p in out.iterdir()) == ["attention.json", "attention.png"]  # no temporary left
