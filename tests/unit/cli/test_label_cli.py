"""`sapis label PATH --out OUT` and `sapis label work`: real PySCF (HF/STO-3G water), real SQLite store."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import molecule

from sapis.cli import run
from sapis.cli.label import label_frames
from sapis.tasks.dft import LevelOfTheory, compute_label
from sapis.tasks.scf import Remedy

HF_ARGS = ["--method", "HF", "--basis", "sto-3g", "--no-density-fit"]
HF = LevelOfTheory(method="HF", basis="sto-3g", density_fit=False)


@pytest.fixture
def water_xyz(tmp_path: Path) -> Path:
    frames = [molecule("H2O"), molecule("H2O")]
    frames[1].positions[1] += [0.0, 0.05, 0.02]
    path = tmp_path / "water.xyz"
    ase.io.write(path, frames)
    return path


@pytest.mark.parametrize("leading_option", [False, True])
def test_label_file_writes_ref_labels(water_xyz: Path, tmp_path: Path, leading_option: bool) -> None:
    out = tmp_path / "out.xyz"
    args = (
        ["label", "--out", str(out), str(water_xyz)] if leading_option else ["label", str(water_xyz), "--out", str(out)]
    )
    assert run([*args, *HF_ARGS]) == 0
    got = ase.io.read(out, index=":")
    assert len(got) == 2
    for i, (a, src) in enumerate(zip(got, ase.io.read(water_xyz, index=":"), strict=True)):
        ref = compute_label(src, HF)
        assert a.info["REF_energy"] == pytest.approx(ref.energy, abs=1e-6)
        np.testing.assert_allclose(a.arrays["REF_forces"], ref.forces, atol=1e-4)  # SCF tolerance
        assert a.info["fingerprint"] == HF.fingerprint
        assert a.info["frame"] == i


def test_explicit_file_subcommand(water_xyz: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.xyz"
    assert run(["label", "file", str(water_xyz), "-o", str(out), *HF_ARGS]) == 0
    assert len(ase.io.read(out, index=":")) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--multiplicity", "2"], "frame 0: multiplicity 2 is impossible with 10 electrons"),
        (["--charge", "1", "--multiplicity", "1"], "frame 0: multiplicity 1 is impossible with 9 electrons"),
        (["--basis", "no-such-basis"], "unknown basis 'no-such-basis'"),
        (["--method", "NOPE"], "unknown method or functional 'NOPE'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    water_xyz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "out.xyz"
    assert run(["label", str(water_xyz), "--out", str(out), *HF_ARGS, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert err.startswith("sapis: error:")
    assert len(err.splitlines()) == 1
    assert not out.exists()
    assert not out.with_name(out.name + ".tmp").exists()


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["label", str(tmp_path / "nope.xyz"), "--out", str(tmp_path / "o.xyz")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_failed_frames_are_reported_and_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok, hard = molecule("H2O"), molecule("H2O")
    hard.positions[1] *= 2.2  # stretched O-H: plain DIIS needs more than 5 cycles
    level = HF.model_copy(update={"max_cycle": 5, "remedies": (Remedy(strategy="diis"),)})
    out = tmp_path / "out.xyz"
    n_failed = label_frames([ok, hard], level, out, source="mix.xyz", reuse_guess=False)
    assert n_failed == 1
    got = ase.io.read(out, index=":")
    assert [a.info["frame"] for a in got] == [0]
    assert "mix.xyz, frame 1: not labelled: SCF did not converge" in capsys.readouterr().err


def test_all_failed_exits_1(water_xyz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.xyz"
    assert run(["label", str(water_xyz), "--out", str(out), *HF_ARGS, "--max-cycle", "1"]) == 1
    cap = capsys.readouterr()
    assert "labelled 0/2 frames" in cap.out
    assert cap.err.count("not labelled") == 2


def test_label_work_runs_the_store_queue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sapis.storage import Store

    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    ids = store.add_configurations([molecule("H2O")], {"source": "submitted"})
    store.enqueue_labels(ids, HF.fingerprint, HF.spec)
    assert run(["label", "work", "--max-labels", "5", "--database-url", url, "--worker-id", "cli"]) == 0
    assert "worker cli: 1 done, 0 failed" in capsys.readouterr().out
    assert store.label_counts(HF.fingerprint)["done"] == 1
    store.dispose()


def test_label_work_names_the_known_levels_for_an_unknown_fingerprint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sapis.storage import Store

    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    assert run(["label", "work", "--fingerprint", "nope", "--database-url", url]) == 2
    assert capsys.readouterr().err.strip() == (
        "sapis: error: no level of theory with fingerprint 'nope' in this store; "
        "it holds no levels yet (sapis label queue adds one)"
    )
    ids = store.add_configurations([molecule("H2O")], {"source": "submitted"})
    store.enqueue_labels(ids, HF.fingerprint, HF.spec)
    assert run(["label", "work", "--fingerprint", HF.fingerprint[:-1], "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"known: {HF.fingerprint} (HF/sto-3g, 1 pending)" in err
    assert store.label_counts(HF.fingerprint)["pending"] == 1  # nothing claimed
    assert run(["label", "work", "--fingerprint", HF.fingerprint, "--database-url", url, "--worker-id", "w"]) == 0
    assert "worker w: 1 done" in capsys.readouterr().out
    store.dispose()


def test_help_lists_both_forms(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["label", "--help"]) == 0
    text = capsys.readouterr().out
    assert "work" in text
    assert "file" in text
    assert run(["label", "work", "--help"]) == 0
    assert "--max-labels" in capsys.readouterr().out


def test_label_queue_queues_a_pool_once_and_a_worker_labels_it(
    water_xyz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """deploy/README.md §5 outside Prefect: submit a pool, queue its labels, and a worker labels them."""
    import json

    from sapis.storage import Store

    url = f"sqlite:///{tmp_path / 'store.db'}"
    Store(url).submit_pool([water_xyz], name="water")
    args = ["label", "queue", "--pool", "water", *HF_ARGS, "--database-url", url]
    assert run([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["pool"], out["structures"], out["queued"], out["fingerprint"]) == ("water", 2, 2, HF.fingerprint)
    assert out["labels"]["pending"] == 2
    assert run(args) == 0  # idempotent: nothing new
    assert "pool water: 0 labels queued (2 structures) at HF/sto-3g" in capsys.readouterr().out
    assert run(["label", "work", "--database-url", url, "--worker-id", "q"]) == 0
    assert "worker q: 2 done, 0 failed" in capsys.readouterr().out
    assert Store(url).label_counts(HF.fingerprint) == {"pending": 0, "running": 0, "done": 2, "failed": 0}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--pool", "nope"], "sapis: error: pool 'nope' not found"),
        (["--pool", "water", "--method", "HF", "--basis", "no-such-basis"], "sapis: error: invalid level of theory"),
        (
            ["--pool", "xenon", "--method", "HF", "--basis", "6-31g"],
            "sapis: error: basis '6-31g' has no functions for Xe",
        ),
    ],
)
def test_label_queue_bad_input_is_one_line_and_queues_nothing(
    water_xyz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    from ase import Atoms

    from sapis.storage import Store

    url = f"sqlite:///{tmp_path / 'store.db'}"
    Store(url).submit_pool([water_xyz], name="water")
    ase.io.write(tmp_path / "xe.xyz", [Atoms("XeH2", positions=[[0, 0, 0], [0, 0, 1.9], [0, 0, -1.9]])])
    Store(url).submit_pool([tmp_path / "xe.xyz"], name="xenon")
    code = run(["label", "queue", *extra, "--database-url", url])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1, err
    assert sum(Store(url).label_counts().values()) == 0


def test_label_queue_finds_a_pool_named_by_digits_by_its_name(
    water_xyz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--pool 1` means the pool named "1" when there is one, not pool id 1 (as `data export --pool` does)."""
    import json

    from ase import Atoms

    from sapis.storage import Store

    url = f"sqlite:///{tmp_path / 'store.db'}"
    Store(url).submit_pool([water_xyz], name="water")  # pool id 1, two structures
    ase.io.write(tmp_path / "h2.xyz", [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])])
    Store(url).submit_pool([tmp_path / "h2.xyz"], name="1")  # pool id 2, named "1", one structure
    assert run(["label", "queue", "--pool", "1", *HF_ARGS, "--json", "--database-url", url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["pool"], out["structures"], out["queued"]) == ("1", 1, 1)


def test_label_queue_refuses_a_pool_with_periodic_structures(
    water_xyz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As `campaign start` does: the labeller computes isolated molecules, so a periodic label would only fail."""
    from ase.build import bulk

    from sapis.storage import Store

    url = f"sqlite:///{tmp_path / 'store.db'}"
    ase.io.write(tmp_path / "si.xyz", bulk("Si"))
    Store(url).submit_pool([water_xyz, tmp_path / "si.xyz"], name="mixed")
    assert run(["label", "queue", "--pool", "mixed", *HF_ARGS, "--json", "--database-url", url]) == 2
    cap = capsys.readouterr()
    assert cap.err == (
        "sapis: error: pool 'mixed' structure 2 is periodic (pbc=[True, True, True]); labels are molecular "
        "calculations: submit non-periodic structures (nothing queued)\n"
    )
    assert cap.out == ""
    assert sum(Store(url).label_counts().values()) == 0
    # the check lives in the task, so Python callers (the submit flow) get it too
    from sapis.errors import ConfigError
    from sapis.tasks.label_step import enqueue_pool

    with pytest.raises(ConfigError, match="structure 2 is periodic"):
        enqueue_pool(Store(url), "mixed", LevelOfTheory(method="HF", basis="sto-3g").spec)
    assert sum(Store(url).label_counts().values()) == 0


@pytest.mark.parametrize(
    ("text", "extra", "message"),
    [
        ("2\n\nU 0 0 0\nO 0 0 1.8\n", ["--method", "GFN2-xTB"], "GFN2-xTB has no parameters beyond Rn (Z > 86): U"),
        ("2\n\nH 1e308 0 0\nH 1.7e308 0 0.74\n", HF_ARGS, "in.xyz, frame 0: atom 0: coordinates (1e+308, 0, 0) Å"),
        ("2\n\nH 1e13 0 0\nH 1e13 0 0.74\n", HF_ARGS, "in.xyz, frame 0: atom 0: coordinates (1e+13, 0, 0) Å"),
        ("2\nspin=3 multiplicity=1\nO 0 0 0\nO 0 0 1.21\n", HF_ARGS, "frame 0: multiplicity keys disagree"),
    ],
)
def test_label_rejects_before_compute(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, extra: list[str], message: str
) -> None:
    (tmp_path / "in.xyz").write_text(text)
    out = tmp_path / "out.xyz"
    assert run(["label", str(tmp_path / "in.xyz"), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("sapis: error:") and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("key", ["spin", "spin_multiplicity"])
def test_label_reads_spin_keys_as_the_multiplicity(tmp_path: Path, key: str) -> None:
    """fairchem/OMol25 `spin` and pymatgen's `spin_multiplicity` mean 2S+1: triplet O2, not a singlet."""
    (tmp_path / "o2.xyz").write_text(f'2\n{key}=3 pbc="F F F"\nO 0 0 0\nO 0 0 1.21\n')
    out = tmp_path / "out.xyz"
    assert run(["label", str(tmp_path / "o2.xyz"), "--out", str(out), "--method", "GFN2-xTB"]) == 0
    assert ase.io.read(out).info["multiplicity"] == 3


def test_label_heavy_element_uses_its_ecp(tmp_path: Path) -> None:
    """HI at HF/def2-SVP: -8088.08 eV with I's ECP28 (all-electron with the valence basis gave about -54000 eV)."""
    (tmp_path / "hi.xyz").write_text("2\n\nH 0 0 0\nI 0 0 1.61\n")
    out = tmp_path / "out.xyz"
    assert run(["label", str(tmp_path / "hi.xyz"), "--out", str(out), "--method", "HF", "--no-density-fit"]) == 0
    got = ase.io.read(out)
    assert got.info["REF_energy"] == pytest.approx(-8088.08, abs=0.05)
    assert abs(got.arrays["REF_forces"][0, 2]) < 5.0


def test_label_hybrid_defaults_to_the_jk_fitting_basis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--method HF` without --auxbasis fits exchange with jkfit (the level's default), as LevelOfTheory does."""
    from sapis.tasks.dft import LevelOfTheory

    src = tmp_path / "h2.xyz"
    src.write_text("2\n\nH 0 0 0\nH 0 0 0.74\n")
    out = tmp_path / "out.xyz"
    assert run(["label", str(src), "--out", str(out), "--method", "HF", "--basis", "sto-3g"]) == 0
    (frame,) = ase.io.read(out, ":")
    assert frame.info["fingerprint"] == LevelOfTheory(method="HF", basis="sto-3g").fingerprint
    assert LevelOfTheory(method="HF", basis="sto-3g").auxbasis == "def2-universal-jkfit"
