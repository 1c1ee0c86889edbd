"""Make a GFN2-xTB reference data set for another molecule, in the layout of /work/shared/data/rmd17_ethanol.

Two independent Langevin trajectories (GFN2-xTB via the product's ``sapis.tasks.explore.xtb_calculator``): one
gives ``train.xyz``, the other ``test.xyz``, one frame every ``--interval`` steps after a burn-in; energies (eV)
and forces (eV/Å) are xTB's. ``isolated_atoms.xyz`` holds xTB single-atom energies (spin from the electron
count). The data are written to ``--out`` (not committed).

    .venv/bin/python benchmarks/make_xtb_data.py --molecule CH3COOH --out /tmp/sapis-xtb/acetic_acid
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution


def trajectory(start: Atoms, n_frames: int, args: argparse.Namespace, seed: int) -> list[Atoms]:
    from sapis.tasks.explore import xtb_calculator

    atoms = start.copy()
    atoms.calc = xtb_calculator(atoms)
    rng = np.random.RandomState(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=args.temperature, rng=rng)
    dyn = Langevin(atoms, args.timestep * units.fs, temperature_K=args.temperature, friction=0.02, rng=rng)
    dyn.run(args.burn_in)
    frames = []
    for _ in range(n_frames):
        dyn.run(args.interval)
        f = Atoms(atoms.numbers, atoms.positions.copy())
        f.calc = SinglePointCalculator(f, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frames.append(f)
    return frames


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--molecule", default="CH3COOH", help="ASE g2 name")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train", type=int, default=500)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--temperature", type=float, default=500.0)
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--interval", type=int, default=10)
    p.add_argument("--burn-in", type=int, default=200)
    args = p.parse_args(argv)
    from sapis.runtime import set_threads
    from sapis.tasks.explore import xtb_calculator

    set_threads(1)
    start = molecule(args.molecule)
    args.out.mkdir(parents=True, exist_ok=True)
    ase.io.write(args.out / "train.xyz", trajectory(start, args.train, args, 1), format="extxyz")
    ase.io.write(args.out / "test.xyz", trajectory(start, args.test, args, 2), format="extxyz")
    iso = []
    for z in sorted(set(start.numbers)):
        a = Atoms([int(z)])
        a.info["multiplicity"] = 1 + int(z) % 2 if z != 8 else 3
        a.calc = xtb_calculator(a)
        a.calc = SinglePointCalculator(a, energy=a.get_potential_energy())
        iso.append(a)
    ase.io.write(args.out / "isolated_atoms.xyz", iso, format="extxyz")
    meta = {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "level": "GFN2-xTB"}
    (args.out / "README.json").write_text(json.dumps(meta, indent=1))
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
