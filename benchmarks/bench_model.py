"""Benchmark: sapis transformer vs MACE on rMD17 ethanol, trained in the same run with the same budget.

Both models train in the same loop (same batches, loss, AdamW + warm-up + plateau schedule, EMA, E0s from
isolated atoms, float32, 1 thread) for the same wall-clock minutes; only the architecture differs. Writes
JSON to benchmarks/results/model.json with the machine noted. Not a test.

    .venv/bin/python benchmarks/bench_model.py --minutes 4 --minutes-1000 1.5 --test-frames 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import machine  # benchmarks/ is on sys.path when a script runs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rmd17_ethanol"
PUBLISHED = {
    "N50": {
        "MACE": {"energy_mae_meV": 6.7, "forces_mae_meV_A": 32.6},
        "NequIP": {"energy_mae_meV": 8.7, "forces_mae_meV_A": 40.2},
    },
    "N1000": {"MACE": {"energy_mae_meV": 0.4, "forces_mae_meV_A": 2.1}},
}


def reach(history: list[dict], target: float) -> dict[str, float] | None:
    """FLOPs and wall time at the first epoch whose validation force MAE is <= target."""
    for rec in history:
        if rec.get("valid_f_mae", float("inf")) <= target:
            return {"flops": rec["flops"], "wall_s": rec["wall_s"], "epoch": rec["epoch"]}
    return None


def inference_times(ens: Any, atoms: Any, batch: list) -> dict[str, float]:
    from sapis.models.calculator import SapisCalculator

    calc = SapisCalculator(ens)
    a = atoms.copy()
    a.calc = calc
    times = []
    for k in range(25):
        a.positions[0, 0] += 1e-4 * (-1) ** k  # force a recalculation each call
        t = time.perf_counter()
        a.get_forces()
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    ens.predict(batch, batch_size=len(batch))
    return {
        "single_call_ms": 1000 * statistics.median(times[5:]),
        "batch_s": time.perf_counter() - t,
        "batch_size": len(batch),
    }


def _train_one(job: tuple) -> dict[str, Any]:
    """Train one architecture (runs in its own process, 1 thread) and return its member summary."""
    arch, mcfg, train, valid, cfg, e0s, out_dir = job
    from sapis.models import train_ensemble
    from sapis.runtime import set_threads

    set_threads(1)
    res = train_ensemble(
        train, valid, out_dir, members=1, model=mcfg, train_config=cfg, architecture=arch, e0s=e0s, progress=False
    )
    m = res.members[0]
    return {
        "n_params": m.n_params,
        "train_flops": m.train_flops,
        "train_wall_s": m.wall_s,
        "epochs": len(m.history),
        "best_valid": m.best,
        "history": m.history,
    }


def run_case(
    name: str,
    train: list,
    valid: list,
    test: list,
    minutes: float,
    args: argparse.Namespace,
    e0s: dict[int, float],
    timing: bool,
) -> dict[str, Any]:
    """Train sapis and MACE at the same time (two processes, one thread each, same wall-clock budget), so
    both see the same load on the shared CPU; then evaluate both on ``test``."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from sapis.models import ModelConfig, TrainConfig, evaluate, load_ensemble
    from sapis.models.mace_ref import MaceConfig

    cfg = TrainConfig(
        max_epochs=10_000,
        max_minutes=minutes,
        lr=args.lr,
        batch_size=args.batch_size,
        patience=10_000,
        ema_decay=0.99,
        seed=0,
        dtype="float32",
        bootstrap=False,
    )
    models = {"sapis": ModelConfig.size(args.sapis_size), "mace": MaceConfig(channels=args.mace_channels)}
    out: dict[str, Any] = {
        "n_train": len(train),
        "n_valid": len(valid),
        "n_test": len(test),
        "budget_minutes_per_model": minutes,
        "schedule": "both models trained concurrently, one process and one thread each",
    }
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(arch, mcfg, train, valid, cfg, e0s, Path(tmp) / arch) for arch, mcfg in models.items()]
        with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
            trained = dict(zip(models, pool.map(_train_one, jobs), strict=True))
        for arch, mcfg in models.items():
            ens = load_ensemble(Path(tmp) / arch)
            ev = evaluate(ens, test)
            out[arch] = {
                "config": mcfg.model_dump(),
                **trained[arch],
                "test": {k: v for k, v in ev.items() if k != "members"},
                "flops_per_energy_forces_call": ens.flops_per_structure(test[0]),
            }
            if timing:
                out[arch]["inference"] = inference_times(ens, test[0], args.batch_frames)
            print(
                f"[{name}] {arch}: E {ev['energy_mae_meV']:.2f} meV, F {ev['forces_mae_meV_A']:.2f} meV/Å, "
                f"{trained[arch]['epochs']} epochs, {trained[arch]['n_params']} params",
                flush=True,
            )
    s, mc = out["sapis"], out["mace"]
    target = max(s["best_valid"].get("valid_f_mae", float("inf")), mc["best_valid"].get("valid_f_mae", float("inf")))
    rs, rm = reach(s["history"], target), reach(mc["history"], target)
    out["to_reach_valid_f_mae"] = {"target_meV_A": target, "sapis": rs, "mace": rm}
    apf = lambda r: (1.0 / r["test"]["forces_mae_meV_A"]) / r["train_flops"]  # noqa: E731
    out["ratios_sapis_over_mace"] = {
        "test_forces_mae": s["test"]["forces_mae_meV_A"] / mc["test"]["forces_mae_meV_A"],
        "test_energy_mae": s["test"]["energy_mae_meV"] / mc["test"]["energy_mae_meV"],
        "accuracy_per_flop": apf(s) / apf(mc),
        "train_flops_to_target": (rs["flops"] / rm["flops"]) if rs and rm else None,
        "train_wall_to_target": (rs["wall_s"] / rm["wall_s"]) if rs and rm else None,
    }
    if timing:
        out["ratios_sapis_over_mace"].update(
            inference_single_call_time=s["inference"]["single_call_ms"] / mc["inference"]["single_call_ms"],
            inference_batch_time=s["inference"]["batch_s"] / mc["inference"]["batch_s"],
            flops_per_call=s["flops_per_energy_forces_call"] / mc["flops_per_energy_forces_call"],
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=4.0, help="training wall-clock budget per model, N=50")
    p.add_argument("--minutes-1000", type=float, default=1.5, help="budget per model for N=1000 (0: skip)")
    p.add_argument("--test-frames", type=int, default=200, help="frames of test.xyz to evaluate on")
    p.add_argument("--batch-size", type=int, default=5, help="structures per step (both models)")
    p.add_argument("--lr", type=float, default=5e-3, help="peak learning rate (both models)")
    p.add_argument("--sapis-size", default="M", help="sapis preset size (S/M/L)")
    p.add_argument("--mace-channels", type=int, default=32, help="MACE hidden channels (32x0e+32x1o)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "model.json")
    args = p.parse_args()

    from ase.io import read

    from sapis.runtime import seed_everything, set_threads

    set_threads(1)
    seed_everything(0)
    train_all = read(DATA / "train.xyz", index=":")
    test = read(DATA / "test.xyz", index=f":{args.test_frames}")
    args.batch_frames = read(DATA / "test.xyz", index=":1000")
    e0s = {int(a.numbers[0]): float(a.get_potential_energy()) for a in read(DATA / "isolated_atoms.xyz", ":")}
    result: dict[str, Any] = {
        "benchmark": "rMD17 ethanol, sapis vs MACE, same loop, same wall-clock budget",
        "machine": machine(),
        "budget": {
            "minutes_N50": args.minutes,
            "minutes_N1000": args.minutes_1000,
            "test_frames": args.test_frames,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "dtype": "float32",
            "threads": 1,
            "inference_timing": "N50 models only; 1000-molecule batch = test.xyz[:1000]",
        },
        "limited_by_budget": "all accuracies: both models stop on the wall-clock budget, far from convergence "
        "(published anchors train for hours to days); N=1000 validates on train.xyz[950:] and trains on the rest",
        "published": PUBLISHED,
    }
    result["N50"] = run_case("N50", train_all[:50], train_all[50:100], test, args.minutes, args, e0s, True)
    if args.minutes_1000 > 0:
        result["N1000"] = run_case("N1000", train_all[:950], train_all[950:], test, args.minutes_1000, args, e0s, False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
