"""Pool-based active learning vs random selection on rMD17 ethanol (no DFT: stored labels are the oracle).

Arms (same seed set, model, members and training budget; retrained from scratch every round):
  ours    committee disagreement (calibrated) + diversity  (sapis.tasks.rank, diversity=True)
  nodiv   committee disagreement only                      (diversity=False)
  random  uniform random from the unlabelled pool

Reports force MAE (meV/Å, ensemble mean, on a fixed test subset) against the number of labels for each arm,
the labels each arm needs to reach a target error, and the held-out calibration of the final ensemble.

    .venv/bin/python benchmarks/bench_active_learning.py --help
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine  # benchmarks/ is on sys.path when a script runs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rmd17_ethanol"
RESULTS = Path(__file__).resolve().parent / "results"
ARMS = ("ours", "nodiv", "random")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA, help="folder with train.xyz, test.xyz, isolated_atoms.xyz")
    p.add_argument("--seed-size", type=int, default=10, help="random labelled configurations to start from")
    p.add_argument("--k", type=int, default=10, help="configurations added per round")
    p.add_argument("--rounds", type=int, default=4, help="selection rounds after the seed round")
    p.add_argument("--members", type=int, default=3, help="ensemble members")
    p.add_argument("--epochs", type=int, default=20, help="epochs per member per training")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-clock cap per member per training")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--channels", type=int, default=8, help="tiny model: channels")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--lmax", type=int, default=1)
    p.add_argument("--cutoff", type=float, default=4.0)
    p.add_argument("--pool-size", type=int, default=1000, help="unlabelled pool: first N frames of train.xyz")
    p.add_argument("--test-size", type=int, default=200, help="random test.xyz frames used for the MAE")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="repeats, one per random seed")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--window-lo", type=float, default=0.0, help="trust window on calibrated deviation (eV/Å)")
    p.add_argument("--window-hi", type=float, default=float("inf"), help="(the pool holds no broken frames)")
    p.add_argument(
        "--target-mae",
        type=float,
        default=None,
        help="target force MAE (meV/Å); default: the largest final mean MAE among the arms",
    )
    p.add_argument(
        "--nve-models",
        type=Path,
        nargs="+",
        default=None,
        help="instead of the AL run: NVE stability check of these ensemble dirs (and xTB as reference)",
    )
    p.add_argument("--nve-steps", type=int, default=1000, help="NVE steps (0.5 fs) for --nve-models")
    p.add_argument("--nve-temperature", type=float, default=300.0, help="NVE initial temperature (K)")
    p.add_argument("--out", type=Path, default=RESULTS / "active_learning.json")
    p.add_argument("--work", type=Path, default=Path("/tmp/sapis_bench_al"), help="scratch for checkpoints")
    return p.parse_args(argv)


def _train(train: list, out: Path, a: argparse.Namespace, seed: int, e0s: dict[int, float]) -> Any:
    from sapis.models import ModelConfig, TrainConfig, load_ensemble, train_ensemble

    model = ModelConfig(
        channels=a.channels,
        layers=a.layers,
        lmax=a.lmax,
        heads=2,
        cutoff=a.cutoff,
        num_radial=6,
        radial_hidden=16,
        readout_hidden=8,
    )
    tc = TrainConfig(
        max_epochs=a.epochs,
        max_minutes=a.max_minutes,
        batch_size=a.batch_size,
        lr=a.lr,
        patience=10_000,
        warmup_epochs=0.5,
        device="cpu",
        seed=seed,
        threads=1,
    )
    res = train_ensemble(train, None, out, members=a.members, model=model, train=tc, e0s=e0s, progress=False)
    return load_ensemble(out), res


def _test_mae(ens: Any, test: list) -> dict[str, float]:
    from sapis.models import evaluate

    m = evaluate(ens, test)
    return {"forces_mae_meV_A": float(m["forces_mae_meV_A"]), "energy_mae_meV": float(m["energy_mae_meV"])}


def _labels_to_reach(n: list[int], mae: list[float], target: float) -> float | None:
    """Labels where the (log-log interpolated) curve first reaches ``target``; None if it never does."""
    for i, (ni, mi) in enumerate(zip(n, mae, strict=True)):
        if mi <= target:
            if i == 0:
                return float(ni)
            n0, m0 = n[i - 1], mae[i - 1]
            f = (np.log(m0) - np.log(target)) / (np.log(m0) - np.log(mi))
            return float(np.exp(np.log(n0) + f * (np.log(ni) - np.log(n0))))
    return None


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Run every (seed, round, arm); results are written to ``a.out`` after every training."""
    import torch
    from ase.io import read

    from sapis.tasks.calibration import calibration_report, fit_calibration, plot_calibration
    from sapis.tasks.rank import calibration_data, rank_candidates, score_candidates

    torch.set_num_threads(1)
    pool_all = read(a.data / "train.xyz", f":{a.pool_size}")
    test_all = read(a.data / "test.xyz", ":")
    e0s = {int(x.numbers[0]): float(x.get_potential_energy()) for x in read(a.data / "isolated_atoms.xyz", ":")}
    test_idx = np.random.default_rng(12345).choice(len(test_all), min(a.test_size, len(test_all)), replace=False)
    test = [test_all[i] for i in sorted(test_idx)]
    report: dict[str, Any] = {
        "benchmark": "active_learning",
        "machine": machine(),
        "budget": {
            k: (str(v) if isinstance(v, Path) or v == float("inf") else v)
            for k, v in vars(a).items()
            if k not in ("out", "work")
        },
        "notes": "All numbers are limited by the budget: a tiny model trained for a few epochs per round, "
        "one or two seeds; the gaps between arms are within seed-to-seed noise unless stated.",
        "runs": [],
    }
    t_start = time.perf_counter()
    for seed in a.seeds:
        rng = np.random.default_rng(seed)
        seed_idx = sorted(rng.choice(len(pool_all), a.seed_size, replace=False).tolist())
        state = {
            arm: {
                "labelled": list(seed_idx),
                "n": [],
                "mae": [],
                "e_mae": [],
                "train_s": [],
                "select_s": [],
                "cal_pred": [],
                "cal_err": [],
                "pick_dev": [],
            }
            for arm in a.arms
        }
        shared0 = None
        for rnd in range(a.rounds + 1):
            for arm in a.arms:
                st = state[arm]
                t0 = time.perf_counter()
                if rnd == 0 and shared0 is not None:  # the seed round is identical for every arm
                    ens, metrics, train_s = shared0
                else:
                    ens, _ = _train(
                        [pool_all[i] for i in st["labelled"]],
                        a.work / f"s{seed}_{arm}_r{rnd}",
                        a,
                        seed * 1000 + rnd,
                        e0s,
                    )
                    metrics = _test_mae(ens, test)
                    train_s = time.perf_counter() - t0
                    if rnd == 0:
                        shared0 = (ens, metrics, train_s)
                st["n"].append(len(st["labelled"]))
                st["mae"].append(metrics["forces_mae_meV_A"])
                st["e_mae"].append(metrics["energy_mae_meV"])
                st["train_s"].append(round(train_s, 1))
                print(
                    f"[{time.perf_counter() - t_start:7.0f}s] seed {seed} round {rnd} {arm:6s} "
                    f"N={len(st['labelled']):3d} force MAE {metrics['forces_mae_meV_A']:.1f} meV/Å",
                    flush=True,
                )
                if rnd == a.rounds:
                    st["final_ensemble"] = ens
                    continue
                t1 = time.perf_counter()
                taken = set(st["labelled"])
                rest = [i for i in range(len(pool_all)) if i not in taken]
                if arm == "random":
                    picks = rng.choice(len(rest), a.k, replace=False).tolist()
                else:
                    scores = score_candidates(ens, [pool_all[i] for i in rest])
                    cal = fit_calibration(st["cal_pred"], st["cal_err"]) if st["cal_pred"] else None
                    known = ens.descriptors([pool_all[i] for i in st["labelled"]])
                    sel = rank_candidates(
                        scores,
                        a.k,
                        window=(a.window_lo, a.window_hi),
                        calibration=cal,
                        exclude_descriptors=known,
                        diversity=(arm == "ours"),
                        seed=seed,
                    )
                    picks = sel.indices
                    # the oracle labels of the picks are this round's free calibration data
                    sub = {
                        "forces_std_max": scores["forces_std_max"][picks],
                        "forces": [scores["forces"][j] for j in picks],
                    }
                    p, e = calibration_data(sub, [pool_all[rest[j]] for j in picks])
                    st["cal_pred"].extend(p.tolist())
                    st["cal_err"].extend(e.tolist())
                    st["pick_dev"].append(float(np.mean(scores["forces_std_max"][picks])))
                st["labelled"].extend(rest[j] for j in picks)
                st["select_s"].append(round(time.perf_counter() - t1, 1))
            _write(report, a, state, seed, final=False)
        # held-out calibration of the final "ours" ensemble, fitted on the labels it selected
        for arm in a.arms:
            st = state[arm]
            if arm != "random" and st["cal_pred"]:
                cal = fit_calibration(st["cal_pred"], st["cal_err"])
                scores = score_candidates(st["final_ensemble"], test)
                p, e = calibration_data(scores, test)
                st["calibration"] = {
                    "fit": cal.to_dict(),
                    "held_out": calibration_report(cal, p, e),
                    "raw_held_out": calibration_report(fit_calibration([], []), p, e),
                }
                if arm == "ours" and seed == a.seeds[0]:
                    png = a.out.with_name(a.out.stem + "_calibration.png")
                    plot_calibration(cal, p, e, png, title=f"Held-out calibration (ours, seed {seed})")
        _write(report, a, state, seed, final=True)
        _summarise(report, a)  # after every complete seed, so a cut-short run still has a summary
        report["wall_s"] = round(time.perf_counter() - t_start, 1)
        _save(report, a)
    return report


def _write(report: dict, a: argparse.Namespace, state: dict, seed: int, final: bool) -> None:
    runs = [r for r in report["runs"] if r["seed"] != seed]
    arms = {
        arm: {k: v for k, v in st.items() if k not in ("final_ensemble", "labelled")}
        | {"labelled": [int(i) for i in st["labelled"]]}
        for arm, st in state.items()
    }
    runs.append({"seed": seed, "complete": final, "arms": arms})
    report["runs"] = runs
    _save(report, a)


def _save(report: dict, a: argparse.Namespace) -> None:
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1, default=float))


def _summarise(report: dict, a: argparse.Namespace) -> None:
    """Mean and spread per arm, labels to reach the target, ratios against random; and the plot."""
    runs = [r for r in report["runs"] if r["complete"]]
    if not runs:
        return
    summary: dict[str, Any] = {}
    for arm in a.arms:
        curves = np.array([r["arms"][arm]["mae"] for r in runs])
        summary[arm] = {
            "n": runs[0]["arms"][arm]["n"],
            "mae_mean": curves.mean(0).tolist(),
            "mae_min": curves.min(0).tolist(),
            "mae_max": curves.max(0).tolist(),
        }
    target = a.target_mae
    if target is None:  # the loosest final error among the arms: every arm reaches it, so ratios exist
        target = max(s["mae_mean"][-1] for s in summary.values())
    report["target_mae_meV_A"] = target
    if target is not None:
        for arm in a.arms:
            per_seed = [_labels_to_reach(r["arms"][arm]["n"], r["arms"][arm]["mae"], target) for r in runs]
            summary[arm]["labels_to_target_per_seed"] = per_seed
            mean = _labels_to_reach(summary[arm]["n"], summary[arm]["mae_mean"], target)
            summary[arm]["labels_to_target"] = mean
        base = summary.get("random", {}).get("labels_to_target")
        for arm in a.arms:
            lt = summary[arm].get("labels_to_target")
            summary[arm]["labels_ratio_vs_random"] = None if (lt is None or not base) else lt / base
            summary[arm]["final_mae_ratio_vs_random"] = (
                summary[arm]["mae_mean"][-1] / summary["random"]["mae_mean"][-1] if "random" in summary else None
            )
    report["summary"] = summary
    _plot(summary, target, a.out.with_suffix(".png"), len(runs))


def _plot(summary: dict, target: float | None, path: Path, n_seeds: int) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 4.0), dpi=120)
    ax = fig.subplots()
    for i, (arm, s) in enumerate(summary.items()):
        ax.plot(s["n"], s["mae_mean"], "o-", color=f"C{i}", label=arm)
        if n_seeds > 1:
            ax.fill_between(s["n"], s["mae_min"], s["mae_max"], color=f"C{i}", alpha=0.2)
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=0.8, label="target")
    ax.set(
        xlabel="labelled configurations",
        ylabel="test force MAE (meV/Å)",
        yscale="log",
        title=f"AL vs random, rMD17 ethanol ({n_seeds} seed(s), band: min-max)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def run_nve(a: argparse.Namespace) -> dict[str, Any]:
    """NVE gate on ethanol (first test.xyz frame) for each model dir and for GFN2-xTB; JSON + PNG."""
    import torch
    from ase.io import read

    from sapis.models import SapisCalculator
    from sapis.tasks.explore import xtb_calculator
    from sapis.tasks.nve import check_nve, plot_nve

    torch.set_num_threads(1)
    start = read(a.data / "test.xyz", "0")
    calcs: dict[str, Any] = {"GFN2-xTB": xtb_calculator(start)}
    for d in a.nve_models:
        calcs[d.name] = SapisCalculator.from_checkpoint(d)
    results, out = {}, {"benchmark": "active_learning_nve", "machine": machine(), "runs": {}}
    for name, calc in calcs.items():
        t0 = time.perf_counter()
        res = check_nve(start, calc, temperature_K=a.nve_temperature, steps=a.nve_steps, timestep_fs=0.5)
        results[name] = res
        out["runs"][name] = {**res.summary(), "wall_s": round(time.perf_counter() - t0, 1)}
        print(name, "passed" if res.passed else f"FAILED: {res.reasons}", flush=True)
    path = a.out.with_name(a.out.stem + "_nve.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))
    plot_nve(results, path.with_suffix(".png"), title=f"NVE, ethanol, {a.nve_temperature:.0f} K")
    return out


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    if a.nve_models:
        run_nve(a)
        return 0
    report = run(a)
    print(json.dumps(report.get("summary", {}), indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
