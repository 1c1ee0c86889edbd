"""DFT (and HF) labels with PySCF: a validated level of theory and one energy+forces computation.

A :class:`LevelOfTheory` is checked before any compute (the method parses, the basis and auxiliary basis
exist, dispersion parameters exist for the method); :func:`compute_label` then checks the molecule (charge and
multiplicity consistent, basis covers every element), runs the SCF through the remediation ladder of
:mod:`sapis.tasks.scf`, and returns energy in eV and forces in eV/Å (converted once here with ``ase.units``).
An SCF that converges on no step raises :class:`LabelFailed`; it never returns a result.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, Literal

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.units import Bohr, Hartree
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from sapis.errors import ConfigError, InputError, SapisError, config_error
from sapis.storage import structures as st
from sapis.tasks.scf import DEFAULT_LADDER, Remedy, run_ladder

Dispersion = Literal["d3bj", "d3zero", "d3bjm", "d3zerom", "d3op"]
# Semi-empirical tight-binding methods run with tblite instead of PySCF: milliseconds per label, a consistent
# potential energy surface for benchmarks and cheap pre-screening. They have no basis set of their own choosing.
XTB_METHODS = {"GFN2-XTB": "GFN2-xTB", "GFN1-XTB": "GFN1-xTB", "IPEA1-XTB": "IPEA1-xTB"}
NO_BASIS = "none"
XTB_MAX_Z = 86  # GFN1/GFN2 parameters cover H to Rn
_PROBE_ELEMENTS = ("H", "C", "O", "N", "Li", "Ne", "Si", "Fe")


@lru_cache(maxsize=256)
def _basis_has(name: str, symbol: str) -> bool:
    """Whether PySCF can load basis ``name`` for element ``symbol``."""
    from pyscf import gto

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bool(gto.basis.load(name, symbol))
        except Exception:
            return False


def _basis_known(name: str) -> bool:
    return any(_basis_has(name, s) for s in _PROBE_ELEMENTS)


@lru_cache(maxsize=256)
def _ecp_has(name: str, symbol: str) -> bool:
    """Whether basis ``name`` defines an effective core potential for ``symbol`` (def2: Rb and heavier).

    All-electron bases (sto-3g, 6-31g, cc-pvdz) define none: PySCF then finds nothing and all electrons stay.
    """
    from pyscf import gto

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bool(gto.basis.load_ecp(name, symbol))
        except Exception:
            return False


@lru_cache(maxsize=256)
def _lacks_core(name: str, symbol: str) -> bool:
    """Whether basis ``name`` has no functions tight enough for the 1s core of ``symbol``: a valence basis
    meant for an ECP. Any all-electron 1s needs an exponent near Z^2 (a single Gaussian fit gives 0.28 Z^2,
    STO-3G 2 Z^2, in Bohr^-2); valence bases (bfd, ccECP, ECP28 bases) stay far below."""
    from pyscf import gto
    from pyscf.data.elements import charge as atomic_number

    z = atomic_number(symbol)
    if z <= 2:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # shells: [l, (kappa,) [exponent, coefficients...], ...]
            shells = gto.basis.load(name, symbol)
            tightest = max(row[0] for sh in shells for row in (sh[2:] if isinstance(sh[1], int) else sh[1:]))
        except Exception:
            return False  # unreadable here: the basis check reports what it can
    return bool(tightest < 0.25 * z**2)


JK_FIT: Final = "def2-universal-jkfit"  # auxiliary basis fitting Coulomb and exchange (Weigend 2008)


def _exact_exchange(method: str) -> bool:
    """HF, or a functional with a share of exact exchange (global or range-separated hybrid)."""
    from pyscf.dft import libxc

    return method == "HF" or bool(libxc.is_hybrid_xc(method))


class LevelOfTheory(BaseModel):
    """A validated level of theory; labels are keyed by its :attr:`fingerprint`.

    >>> level = LevelOfTheory(method="hf", basis="STO-3G", density_fit=False)
    >>> level.method, level.basis, len(level.fingerprint)
    ('HF', 'sto-3g', 16)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str = Field(default="PBE", description="'HF' or a functional PySCF/libxc parses (PBE, B3LYP, wB97X).")
    basis: str = Field(default="def2-svp", description="Orbital basis name known to PySCF.")
    density_fit: bool = Field(default=True, description="Density fitting (RI-J/K) with `auxbasis`.")
    auxbasis: str | None = Field(
        default="def2-universal-jfit",
        description="Auxiliary basis for density fitting; None: PySCF's choice. Unset with HF or a hybrid "
        "functional, it is def2-universal-jkfit: a J-only fitting basis fits exact exchange poorly (water, "
        "def2-SVP: 36 meV and 6 meV/Å off for HF, 5 meV and 3 meV/Å for B3LYP, against 1.5 and 0.8 with jkfit).",
    )
    grid_level: int = Field(default=3, ge=0, le=9, description="PySCF DFT integration grid level (DFT only).")
    dispersion: Dispersion | None = Field(default=None, description="DFT-D3 variant via the dftd3 package.")
    conv_tol: float = Field(default=1e-9, gt=0, le=1e-5, description="SCF energy convergence, Hartree.")
    conv_tol_grad: float | None = Field(default=None, gt=0, description="SCF orbital-gradient convergence.")
    max_cycle: int = Field(default=100, ge=1, description="Cycle limit of each ladder step (unless it sets one).")
    remedies: tuple[Remedy, ...] = Field(
        default=DEFAULT_LADDER, min_length=1, description="SCF remediation ladder, tried in order."
    )

    @field_validator("method")
    @classmethod
    def _method_parses(cls, v: str) -> str:
        v = v.strip().upper()
        if v in ("HF", "RHF", "UHF"):
            return "HF"
        if v in XTB_METHODS:
            return XTB_METHODS[v]
        from pyscf.dft import libxc

        try:
            (hybrid, *_), terms = libxc.parse_xc(v)
        except Exception as exc:
            raise ValueError(f"unknown method or functional {v!r} (PySCF/libxc cannot parse it)") from exc
        if not hybrid and not any(weight for _, weight in terms):  # '' or ',': PySCF would run Hartree only
            raise ValueError(f"method {v!r} has no exchange or correlation; give HF or a functional (PBE, B3LYP, ...)")
        return v

    @field_validator("basis")
    @classmethod
    def _basis_exists(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("method") in XTB_METHODS.values():
            return NO_BASIS  # tblite's methods carry their own minimal basis
        v = v.strip().lower()
        if not _basis_known(v):
            raise ValueError(f"unknown basis {v!r} (PySCF cannot load it)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> LevelOfTheory:
        if self.is_xtb:
            if self.dispersion is not None:
                raise ValueError(f"{self.method} includes its own dispersion; dispersion must be unset")
            for name, value in (("basis", NO_BASIS), ("density_fit", False), ("auxbasis", None), ("grid_level", 0)):
                object.__setattr__(self, name, value)  # meaningless for tight binding: one spelling, one fingerprint
            return self
        if self.density_fit and "auxbasis" not in self.model_fields_set and _exact_exchange(self.method):
            object.__setattr__(self, "auxbasis", JK_FIT)  # the default jfit basis is for Coulomb fitting only
        if not self.density_fit and self.auxbasis is not None:
            object.__setattr__(self, "auxbasis", None)  # no fitting: the auxiliary basis is irrelevant
        if self.auxbasis is not None:
            aux = self.auxbasis.strip().lower()
            if not _basis_known(aux):
                raise ValueError(f"unknown auxiliary basis {aux!r} (PySCF cannot load it)")
            object.__setattr__(self, "auxbasis", aux)
        if self.dispersion is not None:
            from dftd3.interface import RationalDampingParam, ZeroDampingParam

            param = RationalDampingParam if self.dispersion.startswith("d3bj") else ZeroDampingParam
            try:
                param(method=self.method.lower())
            except Exception as exc:
                raise ValueError(f"no {self.dispersion} parameters for method {self.method!r}") from exc
        return self

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LevelOfTheory:
        """Build from a spec dict (e.g. one stored with a label); ConfigError names every problem."""
        try:
            return cls.model_validate(spec)
        except ValidationError as exc:
            raise config_error("invalid level of theory", exc) from None

    @property
    def spec(self) -> dict[str, Any]:
        """JSON-able spec (everything, including the ladder), what workers rebuild the level from."""
        return self.model_dump(mode="json")

    @property
    def fingerprint(self) -> str:
        """Stable 16-hex-digit hash of the physics of the level plus the PySCF (and dftd3) version.

        ``max_cycle`` and ``remedies`` are left out on purpose: they decide how (and whether) an SCF
        converges, not what it converges to, so raising a cycle limit does not split the data into two levels.
        """
        import pyscf

        physics = self.model_dump(mode="json", exclude={"max_cycle", "remedies"})
        if self.is_xtb:
            from importlib.metadata import version

            physics["tblite"] = version("tblite")
        else:
            physics["pyscf"] = pyscf.__version__
        if self.dispersion is not None:
            from importlib.metadata import version

            physics["dftd3"] = version("dftd3")
        blob = json.dumps(physics, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def is_hf(self) -> bool:
        return self.method == "HF"

    @property
    def is_xtb(self) -> bool:
        """A tight-binding method computed with tblite (no PySCF, no basis set)."""
        return self.method in XTB_METHODS.values()

    def check_elements(self, symbols: set[str]) -> None:
        """ConfigError unless the level covers every element in ``symbols``.

        xTB: GFN parameters exist for H to Rn only. PySCF: the basis (and auxiliary basis) have functions for
        each element, and an element whose basis functions are a valence set (no 1s core) has an ECP of the
        basis's name; elements for which the basis defines an ECP are computed with it (:func:`_build_mol`).
        """
        if self.is_xtb:
            beyond = sorted((s for s in symbols if atomic_numbers[s] > XTB_MAX_Z), key=atomic_numbers.__getitem__)
            if beyond:
                raise ConfigError(f"{self.method} has no parameters beyond Rn (Z > {XTB_MAX_Z}): {', '.join(beyond)}")
            return
        for name, kind in ((self.basis, "basis"), (self.auxbasis, "auxiliary basis")):
            if name is None:
                continue
            missing = sorted(s for s in symbols if not _basis_has(name, s))
            if missing:
                raise ConfigError(f"{kind} {name!r} has no functions for {', '.join(missing)}")
        no_ecp = sorted(s for s in symbols if not _ecp_has(self.basis, s) and _lacks_core(self.basis, s))
        if no_ecp:
            raise ConfigError(
                f"basis {self.basis!r} has only valence functions for {', '.join(no_ecp)} and PySCF knows no "
                "effective core potential of that name for them; use a basis that brings its ECP (e.g. def2-svp) "
                "or an all-electron basis"
            )


class LabelFailed(SapisError):
    """Every remedy of the SCF ladder failed; ``attempts`` records each try."""

    def __init__(self, reason: str, attempts: list[dict[str, Any]]) -> None:
        self.reason, self.attempts = reason, attempts
        super().__init__(reason)


@dataclass
class LabelResult:
    """A converged label: energy (eV), forces (n, 3) eV/Å, and what it cost."""

    energy: float
    forces: np.ndarray  # (n_atoms, 3) | eV/Å
    scf_iterations: int  # over all ladder attempts
    wall_s: float
    cpu_s: float
    attempts: list[dict[str, Any]]
    dm: np.ndarray = field(repr=False)  # (nao, nao) or (2, nao, nao) converged density matrix, AO basis
    guess: str = "minao"  # where the initial density came from
    dispersion_energy: float | None = None  # eV, included in `energy`

    def cost(self, **extra: Any) -> dict[str, Any]:
        """The cost mapping the store records with a label (wall_s, cpu_s, scf_iterations, attempts, ...)."""
        return {
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "scf_iterations": self.scf_iterations,
            "attempts": self.attempts,
            "guess": self.guess,
            **extra,
        }


def _where(atoms: Atoms, source: str | None) -> str:
    if source:
        return source
    cid = atoms.info.get("config_id")
    return f"config {cid}" if cid is not None else "structure"


def check_molecule(
    atoms: Atoms,
    charge: int | None = None,
    multiplicity: int | None = None,
    source: str | None = None,
    frame: int | None = None,
    allow_fragments: bool | None = None,
) -> tuple[int, int]:
    """InputError unless ``atoms`` is a sane finite molecule with a consistent charge and multiplicity.

    Charge and multiplicity default to ``atoms.info`` (integers only: 1.5 is an error, never truncated) and then
    to neutral, lowest spin by electron parity. Separated fragments are refused unless ``allow_fragments``
    (default: what the configuration's provenance recorded at submission), and then need a multiplicity that
    leaves each radical fragment its unpaired electron. Returns ``(charge, multiplicity)``.
    """
    where = _where(atoms, source)

    def bad(problem: str) -> InputError:
        return InputError(where, problem, frame)

    if atoms.pbc.any():
        raise bad("periodic structure; the labeller computes isolated molecules only")
    q = int(st.integer_info(atoms, "charge", 0, where, frame) if charge is None else charge)
    if allow_fragments is None:
        allow_fragments = bool((atoms.info.get("provenance") or {}).get("allow_fragments"))
    m = multiplicity if multiplicity is not None else st.multiplicity_info(atoms, where, frame)
    problem = st.molecule_problem(atoms, q, None if m is None else int(m), allow_fragments)
    if problem is not None:
        raise bad(problem)
    m = int(m) if m is not None else st.default_multiplicity(atoms, q, allow_fragments)
    return q, m


def _fit_guess(dm: np.ndarray | None, nao: int, unrestricted: bool) -> np.ndarray | None:
    """Adapt a stored density matrix to this SCF (R <-> U); None when its shape does not fit."""
    if dm is None:
        return None
    dm = np.asarray(dm, dtype=float)
    if dm.shape == (2, nao, nao):
        return dm if unrestricted else dm[0] + dm[1]
    if dm.shape == (nao, nao):
        return np.stack([dm / 2, dm / 2]) if unrestricted else dm
    return None


def _build_mol(atoms: Atoms, level: LevelOfTheory, charge: int, mult: int, max_memory_mb: int) -> Any:
    from pyscf import gto

    mol = gto.Mole()
    mol.atom = [(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)]
    mol.unit = "Angstrom"
    mol.basis = level.basis
    # The basis's own ECP wherever it defines one (def2: Rb and heavier); all-electron bases define none, so
    # light-element results and fingerprints are unchanged. Labels of such elements computed before this
    # (same fingerprint) were all-electron with a valence basis: wrong, by thousands of eV for HI.
    ecp = {s: level.basis for s in set(atoms.get_chemical_symbols()) if _ecp_has(level.basis, s)}
    if ecp:
        mol.ecp = ecp
    mol.charge, mol.spin = charge, mult - 1
    mol.max_memory = max_memory_mb
    mol.verbose = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mol.build(parse_arg=False, dump_input=False)
    return mol


DENSE_MATRICES = 25  # (nao, nao) float64 matrices an SCF with gradients holds at once (S, H, F, D, C, DIIS, ...)


def _check_memory(mol: Any, max_memory_mb: int, where: str, frame: int | None) -> None:
    """Refuse, before any integral, a molecule whose SCF cannot fit ``max_memory_mb``: its dense AO matrices alone
    (a lower bound on what PySCF holds) would exceed it, so the calculation would swap or be killed hours later."""
    need_mb = DENSE_MATRICES * (2 if mol.spin else 1) * mol.nao**2 * 8 / 1e6
    if need_mb > max_memory_mb:
        raise InputError(
            where,
            f"{mol.natm} atoms with {mol.nao} basis functions need at least {need_mb:,.0f} MB for the SCF's dense "
            f"matrices, more than the {max_memory_mb} MB allowed (label.max_memory_mb, SAPIS_DFT_MAX_MEMORY_MB): "
            "label smaller structures or fragments, or allow more memory",
            frame=frame,
        )


def _mf_factory(mol: Any, level: LevelOfTheory, device: str) -> Any:
    """A function returning a fresh SCF object; fitting tensors and grids are built once and shared."""
    from pyscf import dft, scf

    unrestricted = mol.spin != 0
    shared: dict[str, Any] = {}

    def make() -> Any:
        if level.is_hf:
            mf = scf.UHF(mol) if unrestricted else scf.RHF(mol)
        else:
            mf = dft.UKS(mol) if unrestricted else dft.RKS(mol)
            mf.xc = level.method
            if "grids" not in shared:
                mf.grids.level = level.grid_level
                shared["grids"] = mf.grids
            mf.grids = shared["grids"]
        if level.density_fit:
            mf = mf.density_fit(auxbasis=level.auxbasis, with_df=shared.get("df"))
            shared["df"] = mf.with_df
        mf.conv_tol = level.conv_tol
        if level.conv_tol_grad is not None:
            mf.conv_tol_grad = level.conv_tol_grad
        mf.chkfile = None
        mf.verbose = 0
        if device == "gpu":
            mf = mf.to_gpu()
        return mf

    return make


def compute_label(
    atoms: Atoms,
    level: LevelOfTheory,
    charge: int | None = None,
    multiplicity: int | None = None,
    threads: int = 1,
    max_memory_mb: int = 4000,
    guess_dm: np.ndarray | None = None,
    *,
    device: Literal["cpu", "gpu"] = "cpu",
    source: str | None = None,
    frame: int | None = None,
    allow_fragments: bool | None = None,
) -> LabelResult:
    """Energy (eV) and forces (eV/Å) of ``atoms`` at ``level``.

    Everything checkable is checked before compute (InputError/ConfigError). ``guess_dm`` (a converged density
    of a nearby configuration of the same molecule) starts the SCF when its shape fits. ``threads`` and
    ``max_memory_mb`` bound this call, so several workers can share a node. ``device="gpu"`` runs the same
    spec with gpu4pyscf (imported only then). Raises :class:`LabelFailed` when no ladder step converges.
    """
    q, m = check_molecule(atoms, charge, multiplicity, source, frame, allow_fragments)
    try:
        level.check_elements(set(atoms.get_chemical_symbols()))
    except ConfigError as exc:  # say which structure holds the element
        where = _where(atoms, source) if frame is None else f"{_where(atoms, source)}, frame {frame}"
        raise ConfigError(f"{where}: {exc}") from None
    if level.is_xtb:
        return _xtb_label(atoms, level, q, m)
    if device == "gpu":
        try:
            import gpu4pyscf  # noqa: F401
        except ImportError:
            raise ConfigError("device 'gpu' needs CUDA and gpu4pyscf (pip install 'sapis[gpu]')") from None
    from pyscf import lib

    old_threads = lib.num_threads()
    lib.num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        try:
            mol = _build_mol(atoms, level, q, m, max_memory_mb)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ConfigError(f"{_where(atoms, source)}: PySCF rejects the molecule: {exc}") from None
        _check_memory(mol, max_memory_mb, _where(atoms, source), frame)
        dm0 = _fit_guess(guess_dm, mol.nao, mol.spin != 0)
        guess = "reused" if dm0 is not None else "minao"
        mf, attempts = run_ladder(_mf_factory(mol, level, device), level.remedies, level.max_cycle, dm0, guess)
        if mf is None:
            tried = ", ".join(f"{a['strategy']} ({a['cycles']} cycles)" for a in attempts)
            raise LabelFailed(f"SCF did not converge; tried {tried}", attempts)
        grad_method = mf.nuc_grad_method()
        grad_method.verbose = 0
        grad = np.asarray(grad_method.kernel(), dtype=float)  # (n_atoms, 3) | Hartree/Bohr
        e_tot = float(mf.e_tot)  # Hartree
        e_disp = None
        if level.dispersion is not None:
            from dftd3.pyscf import DFTD3Dispersion

            d3_e, d3_g = DFTD3Dispersion(mol, xc=level.method.lower(), version=level.dispersion).kernel()[:2]
            e_disp = float(d3_e) * Hartree
            e_tot += float(d3_e)
            grad = grad + np.asarray(d3_g)
        dm = np.asarray(mf.make_rdm1())
        if hasattr(dm, "get"):  # cupy array on the GPU path
            dm = dm.get()
    finally:
        lib.num_threads(old_threads)
    if not (np.isfinite(e_tot) and np.isfinite(grad).all()):
        raise LabelFailed("SCF converged to a non-finite energy or gradient", attempts)
    return LabelResult(
        energy=e_tot * Hartree,
        forces=-grad * (Hartree / Bohr),
        scf_iterations=sum(a["cycles"] for a in attempts),
        wall_s=time.perf_counter() - t0,
        cpu_s=time.process_time() - c0,
        attempts=attempts,
        dm=np.asarray(dm, dtype=float),
        guess=guess,
        dispersion_energy=e_disp,
    )


def _xtb_label(atoms: Atoms, level: LevelOfTheory, charge: int, mult: int) -> LabelResult:
    """Energy and forces with tblite (eV, eV/Å); an SCC that does not converge raises LabelFailed."""
    from tblite.interface import Calculator as TBCalculator

    t0, c0 = time.perf_counter(), time.process_time()
    calc = TBCalculator(level.method, atoms.numbers, atoms.positions / Bohr, charge=float(charge), uhf=mult - 1)
    calc.set("verbosity", 0)
    calc.set("max-iter", level.max_cycle)
    try:
        res = calc.singlepoint()
    except RuntimeError as exc:
        attempt = {"strategy": "tblite", "cycles": level.max_cycle, "converged": False, "error": str(exc)}
        raise LabelFailed(f"{level.method} SCC did not converge: {exc}", [attempt]) from None
    energy = float(res.get("energy")) * Hartree  # Hartree -> eV
    grad = np.asarray(res.get("gradient"), dtype=float)  # (n_atoms, 3) | Hartree/Bohr
    attempts = [{"strategy": "tblite", "cycles": 0, "converged": True}]
    if not (np.isfinite(energy) and np.isfinite(grad).all()):
        raise LabelFailed(f"{level.method} gave a non-finite energy or gradient", attempts)
    return LabelResult(
        energy=energy,
        forces=-grad * (Hartree / Bohr),
        scf_iterations=0,
        wall_s=time.perf_counter() - t0,
        cpu_s=time.process_time() - c0,
        attempts=attempts,
        dm=np.zeros((0, 0)),
        guess="none",
    )
