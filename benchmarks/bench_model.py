"""Benchmark: sapis transformer arms vs MACE arms, trained in the same run, same loop, same wall-clock budget.

Every arm (an architecture plus config overrides, e.g. the two-body ablation or a Δ-xTB prior) trains in its own
process with one thread, all arms of a run at the same time (so the shared CPU's load hits them alike), in the
same loop (same batches, loss, AdamW + warm-up + plateau schedule, EMA, E0s from isolated atoms, float32) for
the same wall-clock minutes. Reports test errors (equal wall-clock), validation errors at equal epochs, the wall
time each arm needs to reach MACE's final validation error, inference cost, and optionally the shortest H-H
distance and bond breaks in a Langevin MD with each trained sapis arm. Writes JSON (machine and load noted).
Not a test.

    nice -n 5 .venv/bin/python benchmarks/bench_model.py --n-train 50 --minutes 5 \\
        --arm sapis=sapis:correlation=2 --arm sapis_2body=sapis:correlation=1 --arm mace=mace \\
        --out benchmarks/results/model_N50_5min.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from _machine import machine  # benchmarks/ is on sys.path when a script runs

if TYPE_CHECKING:
    from sapis.models import TrainConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rmd17_ethanol"
PUBLISHED = {
    "N50": {
        "MACE": {"energy_mae_meV": 6.7, "forces_mae_meV_A": 32.6},
        "NequIP": {"energy_mae_meV": 8.7, "forces_mae_meV_A": 40.2},
    },
    "N1000": {"MACE": {"energy_mae_meV": 0.4, "forces_mae_meV_A": 2.1}},
}


def parse_arm(text: str) -> tuple[str, str, dict[str, Any]]:
    """'name=arch[:key=value,...]' -> (name, arch, overrides); values are JSON (true, 2, 0.5) or strings."""
    name, _, rest = text.partition("=")
    arch, _, kv = rest.partition(":")
    over: dict[str, Any] = {}
    for item in filter(None, kv.split(",")):
        k, _, v = item.partition("=")
        try:
            over[k] = json.loads(v)
        except json.JSONDecodeError:
            over[k] = v
    if not name or arch not in ("sapis", "mace"):
        raise SystemExit(f"--arm {text!r}: expected name=sapis|mace[:key=value,...]")
    return name, arch, over


def arm_configs(
    arms: list[tuple[str, str, dict[str, Any]]], base: TrainConfig, sapis_size: str, mace_channels: int
) -> tuple[dict[str, Any], dict[str, TrainConfig]]:
    """Each arm's model config and training config: an override whose key is a TrainConfig field (lr,
    batch_size, ema_decay, ...) changes that arm's training, every other key its model; unknown keys fail."""
    from sapis.models import ModelConfig, TrainConfig
    from sapis.models.config import MaceConfig

    models: dict[str, Any] = {}
    trains: dict[str, TrainConfig] = {}
    for name, arch, over in arms:
        t_over = {k: v for k, v in over.items() if k in TrainConfig.model_fields}
        m_over = {k: v for k, v in over.items() if k not in t_over}
        trains[name] = TrainConfig(**{**base.model_dump(), **t_over})  # validated, unlike model_copy(update=)
        models[name] = (
            ModelConfig.size(sapis_size, **m_over)
            if arch == "sapis"
            else MaceConfig(**{"channels": mace_channels, **m_over})
        )
    return models, trains


def reach(history: list[dict], target: float) -> dict[str, float] | None:
    """FLOPs and wall time at the first epoch whose validation force MAE is <= target."""
    for rec in history:
        if rec.get("valid_f_mae", float("inf")) <= target:
            return {"flops": rec["flops"], "wall_s": rec["wall_s"], "cpu_s": rec["cpu_s"], "epoch": rec["epoch"]}
    return None


def valid_at_epoch(history: list[dict], epoch: int) -> float | None:
    """Validation force MAE (meV/Å) of the EMA weights after ``epoch`` epochs."""
    for rec in history:
        if rec["epoch"] == epoch:
            return rec.get("valid_f_mae")
    return None


def inference_times(model_dir: Path, atoms: Any, batch: list) -> dict[str, float]:
    """Median ASE energy+forces call (ms) through SapisCalculator.from_checkpoint, and a batched predict."""
    from sapis.models import load_ensemble
    from sapis.models.calculator import SapisCalculator

    a = atoms.copy()
    a.calc = SapisCalculator.from_checkpoint(model_dir)
    times = []
    for k in range(25):
        a.positions[0, 0] += 1e-4 * (-1) ** k  # force a recalculation each call
        t = time.perf_counter()
        a.get_forces()
        times.append(time.perf_counter() - t)
    ens = load_ensemble(model_dir)
    t = time.perf_counter()
    ens.predict(batch, batch_size=len(batch))
    return {
        "single_call_ms": 1000 * statistics.median(times[5:]),
        "batch_s": time.perf_counter() - t,
        "batch_size": len(batch),
    }


def xtb_call_ms(atoms: Any) -> float:
    """Median GFN2-xTB energy+forces call (ms), the inference cost a Δ-xTB model adds."""
    from sapis.models.priors import baseline_energy_forces

    times = []
    for _ in range(15):
        t = time.perf_counter()
        baseline_energy_forces([atoms], "gfn2-xtb")
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times[3:])


def _train_arm(job: tuple) -> dict[str, Any]:
    """Train one arm in its own process (1 thread), evaluate it on every test file, time it."""
    _name, arch, mcfg, train, valid, tests, cfg, e0s, out_dir, timing = job
    import torch

    from sapis.models import evaluate, train_ensemble
    from sapis.runtime import set_threads

    set_threads(1)
    res = train_ensemble(
        train, valid, out_dir, members=1, model=mcfg, train_config=cfg, architecture=arch, e0s=e0s, progress=False
    )
    m = res.members[0]
    out: dict[str, Any] = {
        "architecture": arch,
        "config": mcfg.model_dump(),
        "train_config": cfg.model_dump(),
        "n_params": m.n_params,
        "train_flops": m.train_flops,
        "train_wall_s": m.wall_s,
        "train_cpu_s": m.history[-1]["cpu_s"] if m.history else None,
        "epochs": len(m.history),
        # tensors taken from a warm start (a pre-trained model): 0 when the arm starts from scratch
        "warm_loaded": torch.load(m.path, weights_only=True)["metadata"].get("warm_loaded", 0),
        "best_valid": m.best,
        "history": m.history,
        "test": {},
    }
    if cfg.warm_start is not None:  # where the pre-trained weights came from, and what they cost
        pre = torch.load(cfg.warm_start, weights_only=True)
        meta = pre["metadata"]
        out["warm_start_from"] = {
            "path": str(cfg.warm_start),
            "architecture": pre["spec"]["architecture"],
            "baseline": pre["spec"].get("baseline"),
            **{k: meta.get(k) for k in ("n_train", "n_valid", "cpu_s", "wall_s", "train_flops", "best")},
            "epochs": len(meta.get("history", [])),
        }
    for tname, frames in tests.items():
        ev = evaluate(out_dir, frames)
        out["test"][tname] = {k: v for k, v in ev.items() if k != "members"}
    if timing:
        out["inference"] = inference_times(out_dir, next(iter(tests.values()))[0], timing)
    return out


def _md_arm(job: tuple) -> dict[str, Any]:
    """Langevin MD with a trained model: shortest H-H distance, shortest distance, bonds broken/formed."""
    name, model_dir, start, temperature, ps, dt_fs, seed = job
    from ase import units
    from ase.data import covalent_radii
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from sapis.models.calculator import SapisCalculator
    from sapis.runtime import set_threads

    set_threads(1)
    atoms = start.copy()
    atoms.calc = SapisCalculator.from_checkpoint(model_dir)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    dyn = Langevin(
        atoms,
        dt_fs * units.fs,
        temperature_K=temperature,
        friction=0.01 / units.fs,
        rng=np.random.default_rng(seed + 1),
    )
    z = atoms.numbers
    rsum = covalent_radii[z][:, None] + covalent_radii[z][None, :]
    iu = np.triu_indices(len(atoms), 1)
    bonded0 = (atoms.get_all_distances() < 1.2 * rsum)[iu]
    hh = (z[:, None] == 1) & (z[None, :] == 1)
    rec = {"min_hh_A": np.inf, "min_pair_A": np.inf, "broken": set(), "formed": set(), "steps": 0}

    def watch() -> None:
        d = atoms.get_all_distances()
        rec["min_hh_A"] = min(rec["min_hh_A"], float(d[hh & ~np.eye(len(z), dtype=bool)].min()))
        rec["min_pair_A"] = min(rec["min_pair_A"], float(d[iu].min()))
        du = d[iu]
        for k in np.nonzero(bonded0 & (du > 1.6 * rsum[iu]))[0]:
            rec["broken"].add((int(iu[0][k]), int(iu[1][k])))
        for k in np.nonzero(~bonded0 & (du < 1.0 * rsum[iu]))[0]:
            rec["formed"].add((int(iu[0][k]), int(iu[1][k])))
        rec["steps"] += 1

    dyn.attach(watch, interval=1)
    n_steps = round(1000 * ps / dt_fs)
    t0 = time.perf_counter()
    dyn.run(n_steps)
    return {
        "arm": name,
        "temperature_K": temperature,
        "ps": ps,
        "dt_fs": dt_fs,
        "steps": n_steps,
        "shortest_HH_A": rec["min_hh_A"],
        "shortest_pair_A": rec["min_pair_A"],
        "bonds_broken": sorted(rec["broken"]),
        "bonds_formed": sorted(rec["formed"]),
        "wall_s": time.perf_counter() - t0,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train all arms side by side, evaluate, compare every sapis arm with every MACE arm."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from ase.io import read

    from sapis.models import TrainConfig

    train_all = read(args.train, index=":")
    n_valid = args.n_valid
    n_train = min(args.n_train, len(train_all) - n_valid)
    train, valid = train_all[:n_train], train_all[n_train : n_train + n_valid]
    tests = {Path(t).name: read(t, index=f":{args.test_frames}") for t in args.test}
    e0s = {int(a.numbers[0]): float(a.get_potential_energy()) for a in read(args.isolated_atoms, ":")}
    batch_frames = read(args.test[0], index=":200") if args.timing else None
    cfg = TrainConfig(
        max_epochs=args.max_epochs,
        max_minutes=None if args.cpu_minutes else args.minutes,
        max_cpu_minutes=args.cpu_minutes,
        lr=args.lr,
        batch_size=args.batch_size,
        patience=10_000,
        ema_decay=0.99,
        seed=args.seed,
        dtype="float32",
        bootstrap=False,
    )
    arms = [parse_arm(a) for a in args.arm]
    configs, train_cfgs = arm_configs(arms, cfg, args.sapis_size, args.mace_channels)
    out: dict[str, Any] = {"n_train": len(train), "n_valid": len(valid), "tests": {k: len(v) for k, v in tests.items()}}
    keep = Path(args.keep_models) if args.keep_models else None
    with tempfile.TemporaryDirectory() as tmp:
        root = keep or Path(tmp)
        jobs = [
            (name, arch, configs[name], train, valid, tests, train_cfgs[name], e0s, root / name, batch_frames)
            for name, arch, _ in arms
        ]
        with ProcessPoolExecutor(len(jobs), mp_context=mp.get_context("spawn")) as pool:
            res = dict(zip([a[0] for a in arms], pool.map(_train_arm, jobs), strict=True))
        if args.md_ps > 0:
            start = train_all[0]
            md_jobs = [
                (name, root / name, start, args.md_temperature, args.md_ps, args.md_dt_fs, args.seed)
                for name in (args.md_arm or [n for n, a, _ in arms if a == "sapis"])
            ]
            with ProcessPoolExecutor(len(md_jobs), mp_context=mp.get_context("spawn")) as pool:
                out["md"] = list(pool.map(_md_arm, md_jobs))
    out["arms"] = res
    for name, r in res.items():
        t0 = next(iter(r["test"].values()))
        print(
            f"{name}: E {t0['energy_mae_meV']:.2f} meV, F {t0['forces_mae_meV_A']:.2f} meV/Å, "
            f"{r['epochs']} epochs, {r['n_params']} params",
            flush=True,
        )
    if any(r["config"].get("baseline") == "gfn2-xtb" for r in res.values()):
        out["xtb_call_ms"] = xtb_call_ms(next(iter(tests.values()))[0])
    out["ratios"] = {}
    for s_name, s in res.items():
        if s["architecture"] != "sapis":
            continue
        for m_name, m in res.items():
            if m["architecture"] != "mace":
                continue
            target = m["best_valid"].get("valid_f_mae", float("inf"))
            rs, rm = reach(s["history"], target), reach(m["history"], target)
            epochs = min(s["epochs"], m["epochs"])
            vs, vm = valid_at_epoch(s["history"], epochs), valid_at_epoch(m["history"], epochs)
            ratio: dict[str, Any] = {
                "test_forces_mae": {
                    t: s["test"][t]["forces_mae_meV_A"] / m["test"][t]["forces_mae_meV_A"] for t in s["test"]
                },
                "test_energy_mae": {
                    t: s["test"][t]["energy_mae_meV"] / m["test"][t]["energy_mae_meV"] for t in s["test"]
                },
                "equal_epochs": {"epoch": epochs, "valid_forces_mae": (vs / vm) if vs and vm else None},
                "time_to_mace_final_valid": {
                    "target_meV_A": target,
                    "sapis_cpu_s": rs["cpu_s"] if rs else None,
                    "mace_cpu_s": rm["cpu_s"] if rm else None,
                    "ratio_cpu": (rs["cpu_s"] / rm["cpu_s"]) if rs and rm else None,
                    "ratio_wall": (rs["wall_s"] / rm["wall_s"]) if rs and rm else None,
                    "note": None if rs else "the sapis arm never reached it within the budget",
                },
            }
            if "inference" in s and "inference" in m:
                ratio["single_call_time"] = s["inference"]["single_call_ms"] / m["inference"]["single_call_ms"]
            out["ratios"][f"{s_name}/{m_name}"] = ratio
    return out


def md_only(args: argparse.Namespace) -> None:
    """MD with models kept by an earlier run (``--keep-models``), side by side; writes its own JSON."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from ase.io import read

    start = read(args.train, index=0)
    root = Path(args.md_models)
    jobs = [(n, root / n, start, args.md_temperature, args.md_ps, args.md_dt_fs, args.seed) for n in args.md_arm]
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "Langevin MD with trained models: shortest H-H distance, bonds broken/formed",
        "machine": machine(torch_threads=1),
        "start_structure": f"{args.train} frame 0",
        "models": {n: json.loads((root / n / "ensemble.json").read_text())["spec"]["config"] for n in args.md_arm},
        "bond_rules": "bonded at start: d < 1.2 x summed covalent radii; broken: d > 1.6 x; formed: d < 1.0 x",
    }
    with ProcessPoolExecutor(len(jobs), mp_context=mp.get_context("spawn")) as pool:
        result["md"] = list(pool.map(_md_arm, jobs))
    result["wall_s"] = time.perf_counter() - t0
    result["load_average_at_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    for r in result["md"]:
        print(f"{r['arm']}: shortest H-H {r['shortest_HH_A']:.3f} Å, broken {r['bonds_broken']}")
    print(f"wrote {args.out}")


def _call_ms(atoms: Any, calls: int) -> tuple[float, float]:
    """Median energy+forces call of the calculator attached to ``atoms`` after one warm-up call: (wall ms, CPU ms
    of this process; the CPU figure does not count the time other processes hold the core)."""
    wall, cpu = [], []
    for k in range(calls + 1):
        atoms.positions[0, 0] += 1e-4 * (-1) ** k  # force a recalculation each call
        t, c = time.perf_counter(), time.process_time()
        atoms.get_forces()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return 1000 * statistics.median(wall[1:]), 1000 * statistics.median(cpu[1:])


def timing_only(args: argparse.Namespace) -> None:
    """energy+forces call time of models kept by an earlier run (``--keep-models``), one thread, through
    ``SapisCalculator.from_checkpoint``. Every variant is timed in every round, rounds one after another, so a
    change of load hits all variants alike; ratios are taken within a round, then the median over rounds.
    A Δ model is also timed building a tblite calculator per call (what every call did before), a sapis
    model also with e3nn's per-irrep slices (before ``models/_fx_split.py``) and, with ``--timing-compile``,
    every model also compiled by torch.compile (``models/compiled.py``; compile time recorded, not timed)."""
    from ase.io import read

    from sapis.models.calculator import SapisCalculator
    from sapis.runtime import set_threads

    set_threads(1)
    root = Path(args.timing_models)
    names = args.timing_arm or sorted(p.name for p in root.iterdir() if (p / "ensemble.json").exists())
    start = read(args.test[0], index=0)
    variants: dict[str, Any] = {}
    info: dict[str, Any] = {}
    for name in names:
        spec = json.loads((root / name / "ensemble.json").read_text())["spec"]
        calc = SapisCalculator.from_checkpoint(root / name)
        info[name] = {"architecture": spec["architecture"], "baseline": calc.ensemble.baseline}
        info[name]["n_params"] = calc.ensemble.n_params
        a = start.copy()
        a.calc = calc
        variants[name] = a
        if spec["architecture"] == "sapis":  # as built before the split rewrite of e3nn's slices
            from sapis.models import _fx_split

            _fx_split.ENABLED = False
            c = start.copy()
            c.calc = SapisCalculator.from_checkpoint(root / name)
            _fx_split.ENABLED = True
            variants[f"{name}/e3nn_slices"] = c
            if calc.ensemble.baseline != "none":  # neither change: the product as it was
                _fx_split.ENABLED = False
                d = start.copy()
                d.calc = SapisCalculator.from_checkpoint(root / name)
                _fx_split.ENABLED = True
                d.calc.ensemble.reuse_baseline = False
                variants[f"{name}/e3nn_slices+new_xtb_calculator_per_call"] = d
        if args.timing_compile:  # torch.compile'd (models/compiled.py), sapis and MACE alike
            fast = start.copy()
            fast.calc = SapisCalculator.from_checkpoint(root / name, compile=True)
            fast.get_forces()  # compiles (excluded from the timing: each round's first call is a warm-up)
            info[name]["compile_seconds_wall"] = fast.calc.compile_seconds
            info[name]["compiled"] = fast.calc.ensemble.compiled is not None
            variants[f"{name}/compiled"] = fast
        if calc.ensemble.baseline != "none":
            old = SapisCalculator.from_checkpoint(root / name)
            old.ensemble.reuse_baseline = False
            b = start.copy()
            b.calc = old
            variants[f"{name}/new_xtb_calculator_per_call"] = b
    rounds: dict[str, list[float]] = {v: [] for v in variants}  # wall ms
    cpu_rounds: dict[str, list[float]] = {v: [] for v in variants}  # CPU ms
    order = list(variants)
    for r in range(args.timing_rounds):
        for v in order[r % len(order) :] + order[: r % len(order)]:  # rotate who goes first
            w, c = _call_ms(variants[v], args.timing_calls)
            rounds[v].append(w)
            cpu_rounds[v].append(c)

    def summary(xs: list[float]) -> dict[str, float]:
        q = np.quantile(xs, [0.25, 0.5, 0.75])
        return {"median": float(q[1]), "q25": float(q[0]), "q75": float(q[2]), "min": min(xs), "max": max(xs)}

    arch = {v: info[v.split("/")[0]]["architecture"] for v in variants}
    pairs = [(s, m) for s in variants if arch[s] == "sapis" for m in variants if arch[m] == "mace"]
    ratios = {f"{s} / {m}": summary([x / y for x, y in zip(rounds[s], rounds[m], strict=True)]) for s, m in pairs}
    cpu_ratios = {
        f"{s} / {m}": summary([x / y for x, y in zip(cpu_rounds[s], cpu_rounds[m], strict=True)]) for s, m in pairs
    }
    result = {
        "benchmark": "energy+forces call time through SapisCalculator, one thread, variants interleaved in rounds",
        "machine": machine(torch_threads=1),
        "structure": f"{args.test[0]} frame 0 ({len(start)} atoms)",
        "rounds": args.timing_rounds,
        "calls_per_round": args.timing_calls,
        "statistic": "per round: median of the calls (ms, wall and process CPU); reported: median and "
        "quartiles over rounds; ratios: per round, then the median over rounds",
        "models": info,
        "call_ms_wall": {v: summary(x) for v, x in rounds.items()},
        "call_ms_cpu": {v: summary(x) for v, x in cpu_rounds.items()},
        "ratios_within_round_wall": ratios,
        "ratios_within_round_cpu": cpu_ratios,
        "load_average_at_end": [round(x, 2) for x in __import__("os").getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for v, x in result["call_ms_cpu"].items():
        w = result["call_ms_wall"][v]
        print(f"{v}: CPU {x['median']:.2f} ms (quartiles {x['q25']:.2f}-{x['q75']:.2f}), wall {w['median']:.2f} ms")
    for k, x in cpu_ratios.items():
        print(f"{k}: CPU {x['median']:.3f} (quartiles {x['q25']:.3f}-{x['q75']:.3f})")
    print(f"wrote {args.out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, default=DATA / "train.xyz", help="labelled extxyz: first N train, next valid")
    p.add_argument("--test", type=Path, nargs="+", default=[DATA / "test.xyz"], help="one or more labelled extxyz")
    p.add_argument("--isolated-atoms", type=Path, default=DATA / "isolated_atoms.xyz", help="E0s (extxyz)")
    p.add_argument("--n-train", type=int, default=50, help="training structures (capped at len(train) - n_valid)")
    p.add_argument("--n-valid", type=int, default=50, help="validation structures after the training ones")
    p.add_argument("--minutes", type=float, default=5.0, help="training wall-clock budget per arm")
    p.add_argument(
        "--cpu-minutes", type=float, default=None, help="CPU-time budget per arm instead (fair on a loaded machine)"
    )
    p.add_argument("--max-epochs", type=int, default=100_000, help="epoch cap (equal-epoch runs)")
    p.add_argument("--arm", action="append", default=[], help="name=sapis|mace[:key=value,...] (repeatable)")
    p.add_argument("--test-frames", type=int, default=500, help="frames of each test file to evaluate on")
    p.add_argument("--batch-size", type=int, default=5, help="structures per step (all arms)")
    p.add_argument("--lr", type=float, default=2e-2, help="peak learning rate (all arms; an arm's lr=... overrides)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sapis-size", default="M", help="sapis preset the sapis arms' overrides apply to")
    p.add_argument("--mace-channels", type=int, default=32, help="MACE hidden channels (32x0e+32x1o)")
    p.add_argument("--no-timing", dest="timing", action="store_false", help="skip inference timing")
    p.add_argument("--md-ps", type=float, default=0.0, help="Langevin MD length per sapis arm (0: none)")
    p.add_argument("--md-temperature", type=float, default=600.0, help="MD temperature (K)")
    p.add_argument("--md-dt-fs", type=float, default=0.5, help="MD time step (fs)")
    p.add_argument("--md-arm", action="append", default=[], help="arms to run MD with (default: sapis arms)")
    p.add_argument("--keep-models", default=None, help="directory to keep the trained models in")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "model.json")
    p.add_argument("--md-models", default=None, help="skip training: MD only, with the --md-arm models kept here")
    p.add_argument("--timing-models", default=None, help="skip training: time the models kept here")
    p.add_argument("--timing-arm", action="append", default=[], help="kept models to time (default: all)")
    p.add_argument("--timing-rounds", type=int, default=30, help="rounds of interleaved timing")
    p.add_argument("--timing-calls", type=int, default=20, help="energy+forces calls per variant and round")
    p.add_argument("--timing-compile", action="store_true", help="also time each model compiled (torch.compile)")
    args = p.parse_args()
    if args.timing_models:
        timing_only(args)
        return
    if args.md_models:
        md_only(args)
        return
    if not args.arm:
        args.arm = ["sapis=sapis", "mace=mace"]

    from sapis.runtime import seed_everything, set_threads

    set_threads(1)
    seed_everything(args.seed)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "sapis arms vs MACE arms, same loop, same wall-clock budget, trained side by side",
        "machine": machine(torch_threads=1),
        "data": {
            "train": str(args.train),
            "test": [str(t) for t in args.test],
            "isolated_atoms": str(args.isolated_atoms),
        },
        "budget": {
            "wall_minutes_per_arm": None if args.cpu_minutes else args.minutes,
            "cpu_minutes_per_arm": args.cpu_minutes,
            "max_epochs": args.max_epochs,
            "arms_side_by_side": len(args.arm),
            "test_frames": args.test_frames,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "dtype": "float32",
            "threads_per_arm": 1,
            "md": {"ps": args.md_ps, "temperature_K": args.md_temperature, "dt_fs": args.md_dt_fs},
        },
        "limited_by_budget": "all accuracies: every arm stops on the wall-clock budget, far from convergence "
        "(published anchors train for hours to days)",
        "published": PUBLISHED,
        **run(args),
    }
    result["wall_s"] = time.perf_counter() - t0
    result["load_average_at_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
