"""Target distributions for the active-learning benchmark, built independently of both arms.

For each molecule (an xyz file with one structure, or an ``ase.build.molecule`` name) this writes, labelled by
the oracle through the product's own label path (``sapis.tasks.dft.compute_label``; GFN2-xTB by default):

* ``NAME_start.xyz``      the oracle-relaxed structure (what a campaign starts from; unlabelled)
* ``NAME_md300.extxyz``   Langevin MD with the oracle at 300 K (frames after 0.5 ps of equilibration)
* ``NAME_md600.extxyz``   ... at 600 K
* ``NAME_md1200.extxyz``  ... at 1200 K
* ``NAME_torsion.extxyz`` relaxed scans (30° steps) of every rotatable bond's dihedral
* ``NAME_reactive.extxyz`` bonds stretched to 1.2/1.35/1.5 x their length, and protons moved along the
  line to a nearby O/N/F acceptor (proton-transfer-adjacent geometries)

Every frame carries ``REF_energy`` (eV), ``REF_forces`` (eV/Å), ``region`` and the level's ``fingerprint``.

    .venv/bin/python benchmarks/make_al_testsets.py ethanol=CH3CH2OH h2o2=H2O2 malonaldehyde=mal.xyz --out DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units

FRAMES_PER_T = 40
EQUILIBRATION_PS = 0.5


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("molecules", nargs="+", help="NAME=FILE.xyz or NAME=ase-molecule-name")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--oracle", default="GFN2-xTB", help="level-of-theory method (GFN2-xTB, or e.g. PBE)")
    p.add_argument("--basis", default="def2-svp", help="basis for a DFT oracle")
    p.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 600.0, 1200.0])
    p.add_argument("--md-ps", type=float, default=4.0, help="MD length per temperature after equilibration (ps)")
    p.add_argument("--frames", type=int, default=FRAMES_PER_T, help="frames kept per temperature")
    p.add_argument("--torsion-step", type=float, default=30.0, help="scan step in degrees")
    p.add_argument("--seed", type=int, default=12345)
    return p.parse_args(argv)


def _load(spec: str) -> tuple[str, Atoms]:
    from ase.build import molecule
    from ase.io import read

    name, _, src = spec.partition("=")
    if not src:
        src = name
    path = Path(src)
    atoms = read(path) if path.exists() else molecule(src)
    assert isinstance(atoms, Atoms)
    atoms.info = {k: v for k, v in atoms.info.items() if k in ("charge", "multiplicity")}
    atoms.calc = None
    return name, atoms


def _relax(atoms: Atoms, calc: Any, fmax: float = 0.02, steps: int = 300) -> Atoms:
    from ase.optimize import BFGS

    work = atoms.copy()
    work.calc = calc
    BFGS(work, logfile=None).run(fmax=fmax, steps=steps)
    work.set_constraint()
    return work


def _bonds(atoms: Atoms) -> list[tuple[int, int]]:
    from sapis.tasks.explore import covalent_sums, pair_distances

    d = pair_distances(atoms)
    bonded = np.triu(d < 1.2 * covalent_sums(atoms.numbers), k=1)
    return [(int(i), int(j)) for i, j in np.argwhere(bonded)]


def _side(n: int, bonds: list[tuple[int, int]], i: int, j: int) -> list[bool] | None:
    """Atoms on j's side of bond i-j (a mask), or None when the bond is in a ring."""
    adj: dict[int, set[int]] = {k: set() for k in range(n)}
    for a, b in bonds:
        if {a, b} != {i, j}:
            adj[a].add(b)
            adj[b].add(a)
    seen, stack = {j}, [j]
    while stack:
        for nb in adj[stack.pop()]:
            if nb not in seen:
                seen.add(nb)
                stack.append(nb)
    if i in seen:
        return None
    return [k in seen for k in range(n)]


def _md(atoms: Atoms, calc: Any, temperature: float, a: argparse.Namespace, seed: int) -> list[Atoms]:
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin

    from sapis.tasks.md import thermalize

    work = atoms.copy()
    work.set_constraint(FixCom())
    work.calc = calc
    rng = np.random.RandomState(seed)
    thermalize(work, temperature, rng)
    dt = 0.5
    dyn = Langevin(
        work, timestep=dt * units.fs, temperature_K=temperature, friction=0.01 / units.fs, fixcm=False, rng=rng
    )
    dyn.run(int(EQUILIBRATION_PS * 1000 / dt))
    every = max(1, int(a.md_ps * 1000 / dt) // a.frames)
    frames = []
    for _ in range(a.frames):
        dyn.run(every)
        frames.append(Atoms(numbers=work.numbers, positions=work.positions.copy()))
    return frames


def _torsions(atoms: Atoms, calc: Any, step: float) -> list[Atoms]:
    from ase.constraints import FixInternals
    from ase.optimize import BFGS

    bonds = _bonds(atoms)
    n = len(atoms)
    nbrs: dict[int, list[int]] = {k: [] for k in range(n)}
    for i, j in bonds:
        nbrs[i].append(j)
        nbrs[j].append(i)
    out = []
    for i, j in bonds:
        others_i = [k for k in nbrs[i] if k != j]
        others_j = [k for k in nbrs[j] if k != i]
        mask = _side(n, bonds, i, j)
        if not others_i or not others_j or mask is None:
            continue
        # the heaviest neighbour on each side defines the dihedral
        a_ = max(others_i, key=lambda k: atoms.numbers[k])
        b_ = max(others_j, key=lambda k: atoms.numbers[k])
        phi0 = atoms.get_dihedral(a_, i, j, b_)
        for delta in np.arange(step, 360.0, step):
            work = atoms.copy()
            work.set_dihedral(a_, i, j, b_, (phi0 + delta) % 360.0, mask=mask)
            work.set_constraint(FixInternals(dihedrals_deg=[[work.get_dihedral(a_, i, j, b_), [a_, i, j, b_]]]))
            work.calc = calc
            BFGS(work, logfile=None).run(fmax=0.05, steps=60)
            out.append(Atoms(numbers=work.numbers, positions=work.positions.copy()))
    return out


def _reactive(atoms: Atoms) -> list[Atoms]:
    bonds = _bonds(atoms)
    n = len(atoms)
    out = []
    for i, j in bonds:
        # move the lighter end (with everything on its side when the bond is not in a ring)
        if atoms.numbers[i] < atoms.numbers[j]:
            i, j = j, i
        mask = _side(n, bonds, i, j) or [k == j for k in range(n)]
        vec = atoms.positions[j] - atoms.positions[i]
        d0 = np.linalg.norm(vec)
        for f in (1.2, 1.35, 1.5):
            work = Atoms(numbers=atoms.numbers, positions=atoms.positions.copy())
            work.positions[np.array(mask)] += (f - 1.0) * vec
            out.append(work)
        del d0
    # protons towards an acceptor (O, N, F) they are not bonded to, within 3.2 Å
    acceptors = [k for k in range(n) if atoms.numbers[k] in (7, 8, 9)]
    for h in [k for k in range(n) if atoms.numbers[k] == 1]:
        donors = [b for a_, b in bonds if a_ == h] + [a_ for a_, b in bonds if b == h]
        if not donors or atoms.numbers[donors[0]] not in (7, 8, 9):
            continue
        d = donors[0]
        bonded_to_d = {b for a_, b in bonds if a_ == d} | {a_ for a_, b in bonds if b == d}
        for acc in acceptors:
            if acc == d or acc in bonded_to_d:
                continue
            dist = np.linalg.norm(atoms.positions[acc] - atoms.positions[d])
            if dist > 3.2:
                continue
            for t in (0.35, 0.45, 0.5, 0.55, 0.65):
                work = Atoms(numbers=atoms.numbers, positions=atoms.positions.copy())
                work.positions[h] = atoms.positions[d] + t * (atoms.positions[acc] - atoms.positions[d])
                out.append(work)
    return out


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    from ase.io import write

    from sapis.runtime import set_threads
    from sapis.storage.structures import structure_problem
    from sapis.tasks.dft import LevelOfTheory, compute_label
    from sapis.tasks.explore import xtb_calculator

    set_threads(1)
    level = LevelOfTheory.from_spec({"method": a.oracle, "basis": a.basis})
    a.out.mkdir(parents=True, exist_ok=True)
    for k, spec in enumerate(a.molecules):
        name, atoms = _load(spec)
        calc = xtb_calculator(atoms, "GFN2-xTB")  # drives geometry generation; labels come from the oracle
        start = _relax(atoms, calc)
        start.calc = None
        write(a.out / f"{name}_start.xyz", start, format="extxyz")
        regions: dict[str, list[Atoms]] = {}
        for t_i, temperature in enumerate(a.temperatures):
            regions[f"md{temperature:.0f}"] = _md(start, calc, temperature, a, a.seed + 100 * k + t_i)
        regions["torsion"] = _torsions(start, calc, a.torsion_step)
        regions["reactive"] = _reactive(start)
        for region, frames in regions.items():
            good = []
            for frame in frames:
                if structure_problem(frame) is not None:
                    continue
                try:
                    res = compute_label(frame, level, source=f"{name} {region}")
                except Exception as exc:  # a failed label leaves the frame out, counted below
                    print(f"{name} {region}: label failed: {exc}", file=sys.stderr)
                    continue
                frame.info.update(REF_energy=res.energy, region=region, fingerprint=level.fingerprint)
                frame.arrays["REF_forces"] = res.forces
                good.append(frame)
            write(a.out / f"{name}_{region}.extxyz", good, format="extxyz")
            print(f"{name} {region}: {len(good)} of {len(frames)} frames labelled", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
