"""Does the ensemble's disagreement point at its errors? Model variants compared on the product's ranking signal.

Every arm trains an ensemble with ``train_ensemble`` (the campaign's trainer) on the same labelled frames and
scores, with ``score_candidates`` (the campaign's ranking step), (a) labelled held-out frames and (b) the same
frames perturbed by the product's ``perturb`` explorer. Reported per arm and seed: the Spearman correlation of
the max-atom force disagreement with the max-atom force error on the held-out frames (``calibration_data``), and
the far/near ratio of median disagreements. Arms run side by side, one thread each, with the same CPU time.

    bench_uncertainty.py --train T.xyz --test H.xyz --arm old='{"density": false}' --arm new='{}' --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine  # benchmarks/ is on sys.path when a script runs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rmd17_ethanol"


def _arm(job: tuple) -> dict[str, Any]:
    name, overrides, seed, args = job
    from ase.io import read
    from scipy.stats import spearmanr

    from sapis.models import ModelConfig, TrainConfig, load_ensemble, train_ensemble
    from sapis.runtime import set_threads
    from sapis.tasks.explore import ExploreConfig, explore
    from sapis.tasks.rank import calibration_data, score_candidates

    set_threads(1)
    frames = read(args.train, ":")
    train, valid = frames[: args.n_train], frames[args.n_train : args.n_train + args.n_valid]
    held = read(args.test, f":{args.test_frames}")
    e0s = None
    if args.isolated_atoms:
        e0s = {int(a.numbers[0]): float(a.get_potential_energy()) for a in read(args.isolated_atoms, ":")}
    far_cfg = ExploreConfig(
        explorer="perturb", temperatures=[300], n_perturb=3, perturb_sigma=args.sigma, perturb_modes=False, seed=1
    )
    far = explore(held[: args.far_frames], far_cfg).candidates
    model = ModelConfig.size(args.size, baseline=args.baseline, **overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ens"
        train_ensemble(
            train,
            valid,
            out,
            members=args.members,
            model=model,
            train=TrainConfig(max_cpu_minutes=args.cpu_minutes, batch_size=4, seed=seed, device="cpu"),
            e0s=e0s,
            progress=False,
        )
        ens = load_ensemble(out)
        near = score_candidates(ens, held, batch_size=16)
        away = score_candidates(ens, far, batch_size=16)
    pred, err = calibration_data(near, held)
    return {
        "arm": name,
        "seed": seed,
        "config": model.model_dump(mode="json"),
        "spearman_std_vs_error": float(spearmanr(pred, err)[0]),
        "far_near_ratio": float(np.median(away["forces_std_max"]) / np.median(near["forces_std_max"])),
        "median_max_force_error_eV_A": float(np.median(err)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, default=DATA / "train.xyz", help="labelled extxyz: first N train, next valid")
    p.add_argument("--test", type=Path, default=DATA / "test.xyz", help="labelled held-out extxyz")
    p.add_argument("--isolated-atoms", type=Path, default=DATA / "isolated_atoms.xyz", help="E0s (extxyz)")
    p.add_argument("--arm", action="append", required=True, help="name=JSON ModelConfig overrides (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--size", default="S", help="ModelConfig preset the overrides apply to")
    p.add_argument("--baseline", default="gfn2-xtb", help="Δ baseline of every arm")
    p.add_argument("--n-train", type=int, default=50)
    p.add_argument("--n-valid", type=int, default=20)
    p.add_argument("--test-frames", type=int, default=100)
    p.add_argument("--far-frames", type=int, default=20, help="held-out frames perturbed into far candidates")
    p.add_argument("--sigma", type=float, default=0.12, help="perturbation (Å) of the far candidates")
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--cpu-minutes", type=float, default=0.8, help="CPU-time budget per member")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "uncertainty.json")
    args = p.parse_args()
    arms = []
    for text in args.arm:
        name, _, js = text.partition("=")
        arms.append((name, json.loads(js or "{}")))
    jobs = [(name, over, seed, args) for name, over in arms for seed in args.seeds]
    info = machine(torch_threads=1)
    with ProcessPoolExecutor(len(jobs), mp_context=mp.get_context("spawn")) as pool:
        runs = list(pool.map(_arm, jobs))
    summary = {}
    for name, _ in arms:
        mine = [r for r in runs if r["arm"] == name]
        summary[name] = {
            k: float(np.mean([r[k] for r in mine]))
            for k in ("spearman_std_vs_error", "far_near_ratio", "median_max_force_error_eV_A")
        }
        print(name, {k: round(v, 3) for k, v in summary[name].items()}, flush=True)
    result = {
        "benchmark": "ensemble disagreement vs error (train_ensemble + score_candidates + calibration_data)",
        "machine": info,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": runs,
        "mean_over_seeds": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
