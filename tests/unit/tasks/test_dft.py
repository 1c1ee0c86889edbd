"""PySCF labels: agreement with PySCF called directly, finite differences, remediation ladder, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.units import Bohr, Hartree

from sapis.errors import ConfigError, InputError
from sapis.tasks import dft as dft_mod
from sapis.tasks.dft import LabelFailed, LevelOfTheory, compute_label
from sapis.tasks.scf import Remedy

HF_STO3G = LevelOfTheory(method="HF", basis="sto-3g", density_fit=False, conv_tol=1e-11)


@pytest.fixture
def water() -> Atoms:
    w = molecule("H2O")
    w.positions[1] += [0.03, -0.02, 0.05]  # break symmetry so every force component is non-trivial
    return w


def _pyscf_direct(atoms: Atoms, basis: str, charge: int = 0, spin: int = 0, df: bool = False):
    from pyscf import gto, scf

    mol = gto.M(
        atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)],
        basis=basis,
        charge=charge,
        spin=spin,
        unit="Angstrom",
        verbose=0,
    )
    mf = scf.UHF(mol) if spin else scf.RHF(mol)
    if df:
        mf = mf.density_fit(auxbasis="def2-universal-jkfit")  # the default for HF
    mf.conv_tol = 1e-11
    mf.kernel()
    assert mf.converged
    grad = mf.nuc_grad_method().kernel()
    return mf.e_tot * Hartree, -grad * Hartree / Bohr


@pytest.mark.parametrize("df", [False, True])
def test_matches_pyscf_called_directly(water: Atoms, df: bool) -> None:
    level = LevelOfTheory(method="HF", basis="sto-3g", density_fit=df, conv_tol=1e-11)
    res = compute_label(water, level)
    e_ref, f_ref = _pyscf_direct(water, "sto-3g", df=df)
    assert res.energy == pytest.approx(e_ref, abs=1e-7)
    np.testing.assert_allclose(res.forces, f_ref, atol=1e-6)
    assert res.forces.shape == (3, 3)
    assert res.scf_iterations == res.attempts[0]["cycles"] > 0
    assert res.attempts[0]["converged"]
    assert res.attempts[0]["strategy"] == "diis"
    assert res.wall_s > 0
    assert res.cpu_s > 0
    assert res.guess == "minao"


def test_open_shell_uses_unrestricted(water: Atoms) -> None:
    cation = water.copy()
    cation.info["charge"] = 1  # 9 electrons -> doublet by default
    res = compute_label(cation, HF_STO3G)
    assert res.dm.shape[0] == 2
    e_ref, f_ref = _pyscf_direct(cation, "sto-3g", charge=1, spin=1)
    assert res.energy == pytest.approx(e_ref, abs=1e-7)
    np.testing.assert_allclose(res.forces, f_ref, atol=1e-6)


def _fd_forces(atoms: Atoms, level: LevelOfTheory, h: float = 4e-4) -> np.ndarray:
    fd = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            e = []
            for s in (+h, -h):
                a = atoms.copy()
                a.positions[i, k] += s
                e.append(compute_label(a, level).energy)
            fd[i, k] = -(e[0] - e[1]) / (2 * h)
    return fd


def test_forces_equal_finite_differences_df_hf(water: Atoms) -> None:
    level = LevelOfTheory(method="HF", basis="sto-3g", conv_tol=1e-12)  # density fitting on
    res = compute_label(water, level)
    np.testing.assert_allclose(res.forces, _fd_forces(water, level), atol=2e-5)


def test_dispersion_adds_d3_energy_and_forces(water: Atoms) -> None:
    from dftd3.interface import DispersionModel, RationalDampingParam

    plain = LevelOfTheory(method="PBE", basis="sto-3g", grid_level=2, conv_tol=1e-11)
    d3 = plain.model_copy(update={"dispersion": "d3bj"})
    assert plain.fingerprint != d3.fingerprint
    a, b = compute_label(water, plain), compute_label(water, d3)
    model = DispersionModel(water.numbers, water.positions / Bohr)
    ref = model.get_dispersion(RationalDampingParam(method="pbe"), grad=True)
    assert b.dispersion_energy == pytest.approx(ref["energy"] * Hartree, rel=1e-8)
    assert b.energy - a.energy == pytest.approx(ref["energy"] * Hartree, abs=1e-6)
    np.testing.assert_allclose(b.forces - a.forces, -ref["gradient"] * Hartree / Bohr, atol=1e-5)


def test_ladder_all_fail_is_a_failed_label_with_reason(water: Atoms) -> None:
    level = HF_STO3G.model_copy(update={"max_cycle": 1})
    with pytest.raises(LabelFailed) as err:
        compute_label(water, level)
    attempts = err.value.attempts
    assert [a["strategy"] for a in attempts] == ["diis", "diis+damp0.5+shift0.3", "newton"]
    assert not any(a["converged"] for a in attempts)
    assert all(a["cycles"] >= 1 and a["seconds"] >= 0 for a in attempts)
    assert "did not converge" in err.value.reason
    assert "newton" in err.value.reason


def test_ladder_recovers_on_a_later_step(water: Atoms) -> None:
    ladder = (Remedy(strategy="diis", max_cycle=2), Remedy(strategy="newton"))
    level = HF_STO3G.model_copy(update={"remedies": ladder})
    res = compute_label(water, level)
    assert [a["converged"] for a in res.attempts] == [False, True]
    assert res.attempts[1]["strategy"] == "newton"
    assert res.scf_iterations == sum(a["cycles"] for a in res.attempts)
    ref = compute_label(water, HF_STO3G)
    assert res.energy == pytest.approx(ref.energy, abs=1e-6)
    np.testing.assert_allclose(res.forces, ref.forces, atol=1e-4)


def test_damped_shifted_step_recovers(water: Atoms) -> None:
    ladder = (Remedy(strategy="diis", max_cycle=2), Remedy(strategy="diis", damping=0.3, level_shift=0.2))
    res = compute_label(water, HF_STO3G.model_copy(update={"remedies": ladder}))
    assert [a["strategy"] for a in res.attempts] == ["diis", "diis+damp0.3+shift0.2"]
    assert res.attempts[-1]["converged"]
    assert res.energy == pytest.approx(compute_label(water, HF_STO3G).energy, abs=1e-6)


def test_guess_reuse_saves_iterations(water: Atoms) -> None:
    level = HF_STO3G.model_copy(update={"basis": "6-31g"})  # minimal-basis guesses are already near exact
    first = compute_label(water, level)
    moved = water.copy()
    moved.positions[0] += 0.01
    cold = compute_label(moved, level)
    warm = compute_label(moved, level, guess_dm=first.dm)
    assert warm.guess == "reused"
    assert warm.attempts[0]["start"] == "reused"
    assert warm.scf_iterations < cold.scf_iterations
    assert warm.energy == pytest.approx(cold.energy, abs=1e-6)
    wrong = compute_label(moved, level, guess_dm=np.eye(3))  # wrong shape: ignored, not an error
    assert wrong.guess == "minao"


def test_spec_roundtrip_and_fingerprint() -> None:
    level = LevelOfTheory(method="pbe", basis="DEF2-SVP")
    assert level.method == "PBE"
    assert level.basis == "def2-svp"
    again = LevelOfTheory.from_spec(level.spec)
    assert again == level
    assert again.fingerprint == level.fingerprint
    assert level.model_copy(update={"max_cycle": 7}).fingerprint == level.fingerprint
    assert LevelOfTheory(method="B3LYP").fingerprint != level.fingerprint
    assert LevelOfTheory(basis="sto-3g").fingerprint != level.fingerprint
    assert LevelOfTheory(grid_level=5).fingerprint != level.fingerprint
    no_df = LevelOfTheory(density_fit=False)
    assert no_df.auxbasis is None
    assert no_df.fingerprint != level.fingerprint
    assert LevelOfTheory(method="wB97X").method == "WB97X"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"method": "NOTAFUNCTIONAL"}, "unknown method or functional 'NOTAFUNCTIONAL'"),
        ({"basis": "no-such-basis"}, "unknown basis 'no-such-basis'"),
        ({"auxbasis": "no-such-aux"}, "unknown auxiliary basis 'no-such-aux'"),
        ({"grid_level": 12}, "grid_level"),
        ({"dispersion": "d9"}, "dispersion"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_level_is_a_config_error(spec: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="invalid level of theory") as err:
        LevelOfTheory.from_spec(spec)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.fixture
def no_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if an SCF is started: bad input must be rejected before any compute."""

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("SCF started for invalid input")

    monkeypatch.setattr(dft_mod, "run_ladder", boom)


@pytest.mark.usefixtures("no_compute")
@pytest.mark.parametrize(
    ("charge", "mult", "message"),
    [
        (0, 2, "multiplicity 2 is impossible with 10 electrons"),
        (0, 0, "multiplicity must be a positive integer, got 0"),
        (1, 1, "multiplicity 1 is impossible with 9 electrons"),
        (10, None, "charge 10 leaves no electrons"),
        (0, 13, "multiplicity 13 is impossible"),
    ],
)
def test_impossible_charge_or_multiplicity(water: Atoms, charge: int, mult: int | None, message: str) -> None:
    with pytest.raises(InputError, match=message) as err:
        compute_label(water, HF_STO3G, charge=charge, multiplicity=mult, source="water.xyz", frame=3)
    assert str(err.value).startswith("water.xyz, frame 3: ")


@pytest.mark.usefixtures("no_compute")
def test_basis_missing_an_element_is_rejected_before_compute() -> None:
    atoms = Atoms("UH", positions=[[0, 0, 0], [0, 0, 2.0]])
    with pytest.raises(ConfigError, match=r"^structure: basis 'sto-3g' has no functions for U"):
        compute_label(atoms, HF_STO3G, multiplicity=1 + (92 + 1) % 2)
    with pytest.raises(ConfigError, match=r"^uh\.xyz, frame 2: basis 'sto-3g' has no functions for U"):
        compute_label(atoms, HF_STO3G, multiplicity=1 + (92 + 1) % 2, source="uh.xyz", frame=2)


@pytest.mark.usefixtures("no_compute")
@pytest.mark.parametrize(
    ("atoms", "message"),
    [
        (Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.1]]), "atoms 0 and 1 are 0.100 Å apart"),
        (Atoms("H2", positions=[[0, 0, 0], [0, 0, np.nan]]), "atom 1: non-finite coordinates"),
        (Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[5, 5, 5], pbc=True), "periodic"),
        (Atoms(), "no atoms"),
    ],
)
def test_bad_structures_rejected(atoms: Atoms, message: str) -> None:
    with pytest.raises(InputError, match=message):
        compute_label(atoms, HF_STO3G)


def test_gpu_without_gpu4pyscf_is_a_config_error(water: Atoms) -> None:
    pytest.importorskip("pyscf")
    try:
        import gpu4pyscf  # noqa: F401

        pytest.skip("gpu4pyscf installed")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="gpu4pyscf"):
        compute_label(water, HF_STO3G, device="gpu")


def test_threads_are_restored(water: Atoms) -> None:
    from pyscf import lib

    before = lib.num_threads()
    compute_label(water, HF_STO3G, threads=2)
    assert lib.num_threads() == before


def test_xtb_levels_label_through_tblite_with_their_own_fingerprints(water: Atoms) -> None:
    """GFN2-xTB is a level of the label path: tblite's energy and forces, a fingerprint of its own."""
    from tblite.ase import TBLite

    gfn2 = LevelOfTheory.from_spec({"method": "gfn2-xtb", "basis": "def2-tzvp"})
    assert gfn2.method == "GFN2-xTB" and gfn2.is_xtb and gfn2.basis == "none"
    assert LevelOfTheory.from_spec(gfn2.spec).fingerprint == gfn2.fingerprint  # stored spec round-trips
    assert LevelOfTheory.from_spec({"method": "GFN2-xTB"}).fingerprint == gfn2.fingerprint  # basis is irrelevant
    gfn1 = LevelOfTheory.from_spec({"method": "GFN1-xTB"})
    assert len({gfn2.fingerprint, gfn1.fingerprint, HF_STO3G.fingerprint}) == 3  # levels never mix

    res = compute_label(water, gfn2)
    ref = water.copy()
    ref.calc = TBLite(method="GFN2-xTB", verbosity=0)
    assert res.energy == pytest.approx(ref.get_potential_energy(), abs=1e-8)
    np.testing.assert_allclose(res.forces, ref.get_forces(), atol=1e-8)
    assert res.dm.size == 0 and res.wall_s >= 0
    assert abs(compute_label(water, gfn1).energy - res.energy) > 1.0  # really another method (eV)

    with pytest.raises(ConfigError, match="dispersion"):
        LevelOfTheory.from_spec({"method": "GFN2-xTB", "dispersion": "d3bj"})


def _hi() -> Atoms:
    return Atoms("HI", positions=[[0, 0, 0], [0, 0, 1.61]])


def test_heavy_elements_use_the_basis_ecp_like_pyscf() -> None:
    """def2 bases expect an ECP from Rb on: HI matches PySCF given ecp=basis (without it: -54423 eV, not -7995)."""
    from pyscf import gto, scf

    level = LevelOfTheory(method="HF", basis="def2-svp", density_fit=False, conv_tol=1e-11)
    res = compute_label(_hi(), level)
    mol = gto.M(atom="H 0 0 0; I 0 0 1.61", basis="def2-svp", ecp="def2-svp", verbose=0)
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-11
    e_ref = mf.kernel() * Hartree
    f_ref = -mf.nuc_grad_method().kernel() * Hartree / Bohr
    assert res.energy == pytest.approx(e_ref, abs=1e-6)
    np.testing.assert_allclose(res.forces, f_ref, atol=1e-5)
    assert dft_mod._build_mol(_hi(), level, 0, 1, 500).nelectron == 26  # 28 core electrons of I in the ECP


def test_light_elements_and_all_electron_bases_get_no_ecp(water: Atoms) -> None:
    def2 = LevelOfTheory(method="HF", basis="def2-svp", density_fit=False)
    assert dft_mod._build_mol(water, def2, 0, 1, 500)._ecp == {}
    sto = dft_mod._build_mol(_hi(), LevelOfTheory(method="HF", basis="sto-3g", density_fit=False), 0, 1, 500)
    assert sto._ecp == {}
    assert sto.nelectron == 54
    res = compute_label(water, HF_STO3G)
    e_ref, _ = _pyscf_direct(water, "sto-3g")
    assert res.energy == pytest.approx(e_ref, abs=1e-7)


@pytest.mark.parametrize(
    ("basis", "symbols", "ok"),
    [("def2-svp", {"H", "I", "Rb"}, True), ("sto-3g", {"H", "I"}, True), ("bfd-vdz", {"H", "I"}, False)],
)
def test_valence_basis_without_its_ecp_is_rejected(basis: str, symbols: set[str], ok: bool) -> None:
    level = LevelOfTheory(method="HF", basis=basis, density_fit=False)
    if ok:
        level.check_elements(symbols)
        return
    with pytest.raises(ConfigError, match="only valence functions for I and PySCF knows no effective core"):
        level.check_elements(symbols)


@pytest.mark.usefixtures("no_compute")
def test_xtb_rejects_elements_beyond_radon() -> None:
    gfn2 = LevelOfTheory(method="GFN2-xTB")
    gfn2.check_elements({"H", "Rn"})
    atoms = Atoms("UO", positions=[[0, 0, 0], [0, 0, 1.8]])
    with pytest.raises(ConfigError, match=r"^structure: GFN2-xTB has no parameters beyond Rn \(Z > 86\): U$"):
        compute_label(atoms, gfn2)


@pytest.mark.parametrize("key", ["spin", "spin_multiplicity", "multiplicity"])
def test_spin_keys_are_multiplicity_aliases(key: str) -> None:
    o2 = Atoms("O2", positions=[[0, 0, 0], [0, 0, 1.21]], info={key: 3})
    assert dft_mod.check_molecule(o2) == (0, 3)
    o2.info["multiplicity" if key != "multiplicity" else "spin"] = 1
    with pytest.raises(InputError, match=r"o2\.xyz, frame 4: multiplicity keys disagree"):
        dft_mod.check_molecule(o2, source="o2.xyz", frame=4)


def test_exact_exchange_defaults_to_a_jk_fitting_basis() -> None:
    """HF and hybrids fit exchange too: unset, their auxiliary basis is jkfit; PBE and an explicit one keep theirs."""
    assert LevelOfTheory(method="PBE").auxbasis == "def2-universal-jfit"
    assert LevelOfTheory(method="B3LYP").auxbasis == "def2-universal-jkfit"
    assert LevelOfTheory(method="wB97X").auxbasis == "def2-universal-jkfit"
    assert LevelOfTheory(method="HF").auxbasis == "def2-universal-jkfit"
    explicit = LevelOfTheory(method="B3LYP", auxbasis="def2-universal-jfit")
    assert explicit.auxbasis == "def2-universal-jfit"
    # a stored level keeps its auxiliary basis, hence its fingerprint
    assert LevelOfTheory.from_spec(explicit.spec).fingerprint == explicit.fingerprint
    assert LevelOfTheory(method="B3LYP", density_fit=False).auxbasis is None


def test_a_structure_too_large_for_the_memory_is_refused_before_any_integral() -> None:
    """64 waters in def2-SVP have 1536 basis functions: their dense SCF matrices alone need ~470 MB, so with 100 MB
    allowed the label is refused in one line naming the frame before the SCF starts, instead of swapping for hours."""
    grid = np.stack(np.meshgrid(*[np.arange(4.0)] * 3, indexing="ij"), -1).reshape(-1, 3) * 3.0
    water = molecule("H2O")
    atoms = Atoms()
    for shift in grid:
        atoms += Atoms(water.numbers, water.positions + shift)
    level = LevelOfTheory(method="PBE", basis="def2-svp")
    with pytest.raises(InputError) as err:
        compute_label(atoms, level, max_memory_mb=100, source="box.xyz", frame=3, allow_fragments=True)
    assert str(err.value).startswith(
        "box.xyz, frame 3: 192 atoms with 1536 basis functions need at least 472 MB for the SCF's dense matrices, "
        "more than the 100 MB allowed"
    )
