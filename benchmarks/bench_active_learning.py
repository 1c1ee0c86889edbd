"""Active learning vs random selection, run by the campaign's own round steps, on target distributions.

Each arm is a real campaign in a real store (SQLite): every round calls the steps ``flows/round.py`` calls
(``plan_round``, ``explore_round``, ``select_round``, ``label_and_wait``, ``train_round``, ``rerank_queue``,
``evaluate_round``), from a few start structures, not a labelled pool. An arm is an override of the campaign
config's ``select`` section (and its explorers; see ``ARMS``): e.g. ``select.strategy = "uncertainty"`` (the
product's default: calibrated committee disagreement x diversity in the trust window) against ``random``
(uniform among the same round's candidates), or ``select.sources`` (which explorers' candidates may be picked).
Each rule is compared with the random arm of the same candidates (``BASELINES``) in the same run. The per-round
controller is not run, so capacity and labels per round stay the same in every arm.

The oracle is a level of theory of the product's label path: GFN2-xTB (tblite, milliseconds per label) for the
large runs, exploring with GFN1-xTB so that the explorer is not the oracle; or DFT (``--oracle dft``, the
campaign's default level, exploring with GFN2-xTB). Test files (one region each; see make_al_testsets.py) may
carry ``REF_forces``/``REF_energy`` or are labelled by the oracle here.

Reported per arm, round and test region: force MAE and the 95th percentile of the per-atom force error (meV/Å);
after the last round, the share of ``--md-runs`` Langevin runs at ``--md-temperature`` with the final ensemble
that stay physical (no atoms too close, no fragment split off: ``sapis.tasks.explore.frame_problem``).

    .venv/bin/python benchmarks/bench_active_learning.py --molecules START.xyz --test T1.extxyz T2.extxyz \\
        --oracle xtb --seeds 3 --max-labels 40 --out benchmarks/results/al_ethanol.json
    .venv/bin/python benchmarks/bench_active_learning.py --merge al_*.json --out benchmarks/results/active_learning.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
# arm -> (the campaign's select section overrides, explorers). All arms but 'active-committee' differ from
# 'random' only in the selection; 'active-committee' also explores with the arm's own committee (Langevin on
# the ensemble mean, stopped at the trust ceiling). 'active' is the product's default rule.
ARMS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "active": ({"strategy": "uncertainty"}, ["xtb", "perturb"]),
    "random": ({"strategy": "random"}, ["xtb", "perturb"]),
    # k-center greedy (core-set) in the previous ensemble's feature space: coverage, no uncertainty
    "kcenter": ({"strategy": "kcenter"}, ["xtb", "perturb"]),
    # uncertainty x diversity without a ceiling (quantile window 0-1): the hottest frames are kept
    "active-nocap": (
        {"strategy": "uncertainty", "window_quantile": True, "window_lo": 0.0, "window_hi": 1.0},
        ["xtb", "perturb"],
    ),
    # one pick per cluster of an uncertainty-weighted k-means in that space: representative and uncertain
    "cluster": ({"strategy": "cluster"}, ["xtb", "perturb"]),
    "active-committee": ({"strategy": "uncertainty"}, ["xtb", "perturb", "committee"]),
    # the default rule, with MD and perturbation candidates explored but only MD candidates selectable
    # (select.sources); its baseline 'random' selects among all candidates
    "active-md": ({"strategy": "uncertainty", "sources": ["xtb"]}, ["xtb", "perturb"]),
    # MD-only candidates (no perturbation explorer), default rule and its own random baseline
    "active-mdonly": ({"strategy": "uncertainty"}, ["xtb"]),
    "random-mdonly": ({"strategy": "random"}, ["xtb"]),
    # the default rule choosing among xTB MD and the arm's own committee MD (Langevin on the ensemble mean,
    # stopped at the trust ceiling, as in DP-GEN): exploration by the model, against random over xTB MD only
    "active-committee-md": ({"strategy": "uncertainty"}, ["xtb", "committee"]),
    # the same with the committee MD hotter than the xTB pool (explore.committee_temperatures =
    # --committee-temperatures), cut at the trust ceiling: the issue's "higher-temperature committee MD with a
    # trust window"
    "active-committee-hot": ({"strategy": "uncertainty"}, ["xtb", "committee"]),
    # its control: the same hot temperatures run by the xTB explorer (explore.temperatures = --explore-temperatures
    # + --committee-temperatures), at random and by the default rule: is it the heat or the committee?
    "random-xtb-hot": ({"strategy": "random"}, ["xtb"]),
    "active-xtb-hot": ({"strategy": "uncertainty"}, ["xtb"]),
    # the same with the uncertainty-driven bias on the committee MD (explore.bias_strength = --bias-strength)
    "active-udd": ({"strategy": "uncertainty"}, ["xtb", "committee"]),
    # ... with the bias on the members' force variance (explore.bias_on = "forces"), what selection ranks
    "active-udd-forces": ({"strategy": "uncertainty"}, ["xtb", "committee"]),
    # ... with half of each round's labels ranked among the plain xTB MD candidates alone (select.source_shares):
    # the biased committee MD out-ranks plain MD everywhere and left the 300 K region under-sampled
    "active-udd-forces-mix": (
        {"strategy": "uncertainty", "source_shares": {"xtb": 0.5, "committee": 0.5}},
        ["xtb", "committee"],
    ),
    # ... with the plain-MD half drawn at random (select.random_within): typical 300 K frames, not the most uncertain
    "active-udd-forces-mixrand": (
        {"strategy": "uncertainty", "source_shares": {"xtb": 0.5, "committee": 0.5}, "random_within": ["xtb"]},
        ["xtb", "committee"],
    ),
}
# arm -> the random arm it is measured against (default: 'random'); baselines are not rules themselves
BASELINES: dict[str, str] = {
    "active-mdonly": "random-mdonly",
    "active-committee-md": "random-mdonly",
    "active-committee-hot": "random-mdonly",
    "active-xtb-hot": "random-xtb-hot",
    "active-udd": "random-mdonly",
    "active-udd-forces": "random-mdonly",
    "active-udd-forces-mix": "random-mdonly",
    "active-udd-forces-mixrand": "random-mdonly",
}
# arms whose committee MD carries the uncertainty bias (--bias-strength, --bias-width) -> what it follows
# (explore.bias_on); the others run none
BIASED_ARMS = {
    "active-udd": "energy",
    "active-udd-forces": "forces",
    "active-udd-forces-mix": "forces",
    "active-udd-forces-mixrand": "forces",
}

# arms that also run --committee-temperatures -> the explorer that runs them: the committee (its own
# explore.committee_temperatures) or the xTB MD (added to explore.temperatures); the others run none
HOT_ARMS = {"active-committee-hot": "committee", "random-xtb-hot": "xtb", "active-xtb-hot": "xtb"}


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--molecules", type=Path, nargs="+", help="start structures (xyz/extxyz; a few, unlabelled)")
    p.add_argument("--test", type=Path, nargs="+", help="test files, one region each (labelled or not)")
    p.add_argument("--oracle", choices=("xtb", "dft"), default="xtb")
    p.add_argument("--dft-method", default="PBE", help="--oracle dft: method (the campaign default)")
    p.add_argument("--dft-basis", default="def2-svp", help="--oracle dft: basis")
    p.add_argument("--seeds", type=int, default=3, help="repeats per arm (seeds S..S+N-1)")
    p.add_argument("--seed-start", type=int, default=0, help="S: first seed (split seeds over processes, then --merge)")
    p.add_argument("--max-labels", type=int, default=40, help="training labels per arm at the end")
    p.add_argument("--seed-size", type=int, default=8, help="labels of round 0 (farthest-point, both arms)")
    p.add_argument("--k", type=int, default=8, help="labels added per later round")
    p.add_argument("--test-size", type=int, default=2, help="the campaign's own held-out labels (round 0)")
    p.add_argument("--arms", nargs="+", default=["active", "random"], choices=list(ARMS))
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30, help="epochs per member per round (warm start)")
    p.add_argument("--max-minutes", type=float, default=10.0, help="wall-clock cap per member per round")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--lmax", type=int, default=1)
    p.add_argument("--cutoff", type=float, default=4.0)
    p.add_argument(
        "--baseline",
        choices=("auto", "none", "gfn1-xtb", "gfn2-xtb"),
        default="auto",
        help="Δ-learning baseline of the models (auto: the campaign default, GFN2-xTB, with --oracle dft; none with "
        "--oracle xtb, whose labels are GFN2-xTB; gfn1-xtb with --oracle xtb mirrors a campaign: a cheaper method "
        "than the labels as the baseline, and as the explorer)",
    )
    p.add_argument(
        "--explorers", nargs="+", choices=("xtb", "perturb", "committee"), help="override every arm's explorers"
    )
    p.add_argument("--explore-temperatures", type=float, nargs="+", default=[300.0, 600.0, 1000.0])
    p.add_argument(
        "--committee-temperatures",
        type=float,
        nargs="+",
        default=[600.0, 1200.0],
        help="active-committee-hot: the committee MD's temperatures, K (the xTB MD keeps --explore-temperatures); "
        "random-xtb-hot, active-xtb-hot: added to the xTB MD's temperatures",
    )
    p.add_argument("--explore-steps", type=int, default=400, help="MD steps per (structure, temperature)")
    p.add_argument("--perturbations", type=int, default=8)
    p.add_argument("--window-hi", type=float, default=2.0, help="trust window ceiling, eV/Å (campaign default)")
    p.add_argument("--bias-strength", type=float, default=1.0, help="active-udd(-forces): bias depth A, eV")
    p.add_argument(
        "--bias-width",
        type=float,
        help="active-udd: its width B, eV per √atom (active-udd-forces: eV/Å; default: the ensemble's own spread at "
        "each trajectory's start)",
    )
    p.add_argument("--md-runs", type=int, default=3, help="model MD runs per final ensemble")
    p.add_argument("--md-ps", type=float, default=1.0, help="length of each model MD run, ps")
    p.add_argument("--md-temperature", type=float, default=600.0)
    p.add_argument("--work", type=Path, default=Path("/tmp/sapis_bench_al"), help="scratch: store, checkpoints")
    p.add_argument(
        "--name", help="key of this run in the merged JSON (default: the molecule), e.g. 'ethanol (MD-only)'"
    )
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="combine per-molecule result files into --out; a merged file given here carries its molecules over "
        "(marked carried_over) unless a run file re-measures the same key",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "active_learning.json")
    a = p.parse_args(argv)
    if not a.merge and (not a.molecules or not a.test):
        p.error("--molecules and --test are required (or --merge)")
    if a.oracle == "xtb" and a.baseline == "gfn2-xtb":
        p.error("--baseline gfn2-xtb with --oracle xtb: the labels are GFN2-xTB, so the Δ would be zero")
    return a


def _fail(msg: str) -> None:
    print(f"bench_active_learning: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _level(a: argparse.Namespace) -> dict[str, Any]:
    if a.oracle == "xtb":
        return {"method": "GFN2-xTB"}
    return {"method": a.dft_method, "basis": a.dft_basis}


def _baseline(a: argparse.Namespace) -> dict[str, str]:
    """The model's Δ baseline: the campaign default (GFN2-xTB) with the dft oracle; none with the xtb oracle,
    whose labels are GFN2-xTB themselves; or what --baseline names."""
    if a.baseline != "auto":
        return {"baseline": a.baseline}
    return {"baseline": "none"} if a.oracle == "xtb" else {}


def _read(path: Path) -> list[Any]:
    from sapis.errors import SapisError
    from sapis.storage.structures import read_structures

    try:
        return list(read_structures(path))
    except SapisError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{path}: {exc.strerror or exc}")
    return []


def _load_tests(a: argparse.Namespace, level: dict[str, Any]) -> dict[str, list[Any]]:
    """Test regions (file stem or info['region']) with reference labels; unlabelled frames get the oracle's, and
    so do frames whose ``fingerprint`` names another level of theory (geometries from an xTB test set, say,
    relabelled for a DFT oracle): a model is only ever scored against its own oracle."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from rich.progress import track

    from sapis import keys
    from sapis.storage.structures import reference
    from sapis.tasks.dft import LevelOfTheory, compute_label

    lot = LevelOfTheory.from_spec(level)
    regions: dict[str, list[Any]] = {}
    for path in a.test:
        frames = _read(path)
        other = {i for i, at in enumerate(frames) if at.info.get(keys.FINGERPRINT) not in (None, lot.fingerprint)}
        if other:
            print(f"{path}: {len(other)} frames labelled at another level of theory; relabelling them with the oracle")
        for i, atoms in enumerate(track(frames, f"test labels {path.name}", disable=not other, transient=True)):
            e, f = (None, None) if i in other else reference(atoms)
            if e is None or f is None:
                res = compute_label(atoms, lot, source=str(path), frame=i)
                e, f = res.energy, res.forces
            region = str(atoms.info.get("region") or path.stem)
            clean = atoms.copy()
            clean.calc = SinglePointCalculator(clean, energy=float(e), forces=np.asarray(f, dtype=float))
            regions.setdefault(region, []).append(clean)
    return regions


def _config(a: argparse.Namespace, name: str, pool: str, seed: int, arm: str, rounds: int) -> Any:
    from sapis.flows.config import CampaignConfig

    return CampaignConfig.parse(
        {
            "name": name,
            "pools": [pool],
            "seed": seed,
            "level": _level(a),
            "explore": {
                "explorers": a.explorers or ARMS[arm][1],
                "xtb_method": "GFN1-xTB" if a.oracle == "xtb" else "GFN2-xTB",
                "temperatures": a.explore_temperatures
                + (a.committee_temperatures if HOT_ARMS.get(arm) == "xtb" else []),
                "steps": a.explore_steps,
                "interval": 10,
                "n_perturb": a.perturbations,
                **({"committee_temperatures": a.committee_temperatures} if HOT_ARMS.get(arm) == "committee" else {}),
                **(
                    {"bias_strength": a.bias_strength, "bias_width": a.bias_width, "bias_on": BIASED_ARMS[arm]}
                    if arm in BIASED_ARMS
                    else {}
                ),
            },
            "model": {
                "architecture": "sapis",
                "channels": a.channels,
                "layers": a.layers,
                "lmax": a.lmax,
                "heads": 2,
                "cutoff": a.cutoff,
                "num_radial": 6,
                "radial_hidden": 16,
                "readout_hidden": 8,
                # the campaign default learns Δ to GFN2-xTB; with GFN2-xTB as the oracle that Δ is zero, so the
                # xtb oracle trains on the labels themselves (the dft oracle keeps the campaign's default)
                **_baseline(a),
            },
            "train": {"max_epochs": a.epochs, "max_minutes": a.max_minutes, "batch_size": a.batch_size, "lr": a.lr},
            "ensemble": {"members": a.members, "nve_steps": 0},
            "select": {
                "seed_size": a.seed_size,
                "test_size": a.test_size,
                "k": a.k,
                "window_hi": a.window_hi,
                **ARMS[arm][0],
            },
            "label": {"mode": "inline"},
            "targets": {"max_labels": a.max_labels + a.test_size, "max_rounds": rounds},
        },
        source=name,
    )


def run_round(store: Any, campaign_id: int, index: int, cfg: Any, cpu: dict[str, float] | None = None) -> Any:
    """One campaign round through the round flow's own steps (without the Prefect wrappers and the controller)."""
    from sapis.tasks.evaluate_step import evaluate_round
    from sapis.tasks.label_step import label_and_wait, round_label_ids
    from sapis.tasks.plan import plan_round
    from sapis.tasks.round_metrics import LabelStats, RoundMetrics
    from sapis.tasks.select_step import explore_round, rerank_queue, select_round
    from sapis.tasks.train_step import train_round

    plan = plan_round(store, campaign_id, index, cfg)
    metrics = RoundMetrics()
    cpu = {} if cpu is None else cpu

    def label(store: Any, plan: Any, cfg: Any) -> RoundMetrics:  # flows/round.py's label_task minus Prefect
        ids = round_label_ids(store, plan.campaign_id, plan.index)
        out = label_and_wait(store, ids, plan.level, mode=cfg.label.mode)
        return RoundMetrics(label=LabelStats(counts=out.counts, seconds=out.seconds, workers=out.workers_started))

    steps = (explore_round, select_round, label, train_round, rerank_queue, evaluate_round)
    for fn in steps:
        c0 = time.process_time()
        metrics = metrics.merged(fn(store, plan, cfg))
        cpu[fn.__name__] = round(time.process_time() - c0, 2)
    store.update_round(plan.round_id, status="done", step="done", metrics=metrics.to_row())
    return plan


def _errors(ens: Any, regions: dict[str, list[Any]]) -> dict[str, dict[str, float]]:
    """Per region (and 'all'): force MAE per component and p95 of the per-atom force error, meV/Å."""
    out: dict[str, dict[str, float]] = {}
    every: list[np.ndarray] = []
    comps: list[np.ndarray] = []
    for region, frames in regions.items():
        pred = ens.predict(frames)
        diff = np.concatenate([p - a.get_forces() for p, a in zip(pred["forces"], frames, strict=True)])
        norms = np.linalg.norm(diff, axis=1)
        every.append(norms)
        comps.append(np.abs(diff).ravel())
        out[region] = {"f_mae": 1000 * float(np.abs(diff).mean()), "f_p95": 1000 * float(np.percentile(norms, 95))}
    out["all"] = {
        "f_mae": 1000 * float(np.concatenate(comps).mean()),
        "f_p95": 1000 * float(np.percentile(np.concatenate(every), 95)),
    }
    return out


def _md_stability(model_dir: Path, start: Any, a: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Langevin MD with the ensemble mean from ``start``; a run stays physical when no frame has a problem."""
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin

    from sapis.models import SapisCalculator
    from sapis.tasks.explore import frame_problem
    from sapis.tasks.md import thermalize

    calc = SapisCalculator.from_checkpoint(model_dir, device="cpu")
    steps = round(a.md_ps * 1000 / 0.5)
    runs = []
    for r in range(a.md_runs):
        work = start.copy()
        work.info = {}
        work.set_constraint(FixCom())
        work.calc = calc
        rng = np.random.RandomState(1000 * seed + r)
        thermalize(work, a.md_temperature, rng)
        dyn = Langevin(
            work, 0.5 * units.fs, temperature_K=a.md_temperature, friction=0.01 / units.fs, fixcm=False, rng=rng
        )
        problem: tuple[str, str] | None = None
        done = 0
        try:
            while done < steps and problem is None:
                dyn.run(20)
                done += 20
                problem = frame_problem(work, energy=work.get_potential_energy(), reference=start)
        except Exception as exc:  # a model that produces NaN/inf forces: ASE or torch raise
            problem = ("error", f"{type(exc).__name__}: {exc}")
        runs.append({"physical": problem is None, "ps": round(done * 0.5 / 1000, 3), "problem": problem})
    return {"share_physical": sum(r["physical"] for r in runs) / len(runs), "runs": runs}


def _import_everything() -> None:
    """Load every module of the product now (several import lazily), so edits during a run cannot mix versions."""
    import importlib
    import pkgutil

    import sapis

    for sub in ("models", "storage", "tasks", "flows"):
        pkg = importlib.import_module(f"sapis.{sub}")
        for mod in pkgutil.iter_modules(pkg.__path__):
            if sub == "models" and mod.name == "mace_ref":
                continue  # MACE only for architecture 'mace' (its import is slow)
            importlib.import_module(f"sapis.{sub}.{mod.name}")
    del sapis


def run(a: argparse.Namespace) -> dict[str, Any]:
    from _machine import machine  # benchmarks/ is on sys.path when this script runs

    from sapis.flows.campaign import create_campaign
    from sapis.runtime import set_threads
    from sapis.storage import Store
    from sapis.tasks.plan import campaign_label_ids

    set_threads(1)
    _import_everything()  # a run outlives edits of the worktree: every module it uses is loaded now
    level = _level(a)
    starts = [s for path in a.molecules for s in _read(path)]
    formulas = sorted({s.get_chemical_formula() for s in starts})
    regions = _load_tests(a, level)
    rounds = 1 + math.ceil(max(0, a.max_labels - a.seed_size) / a.k)
    store = Store(f"sqlite:///{a.work / 'store.db'}")
    pool = "start-" + "-".join(formulas)
    if pool not in {p.name for p in store.pools()}:
        store.submit_pool([str(p) for p in a.molecules], name=pool)
    report: dict[str, Any] = {
        "benchmark": "active_learning",
        "molecule": a.name or a.molecules[0].stem.removesuffix("_start"),
        "formulas": formulas,
        "machine": machine(),
        "budget": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items() if k not in ("merge",)}
        | {"rounds": rounds, "oracle_level": level},
        "test_regions": {r: len(f) for r, f in regions.items()},
        "runs": [],
    }
    t0 = time.perf_counter()
    for seed in range(a.seed_start, a.seed_start + a.seeds):
        state: dict[str, dict[str, Any]] = {}
        for arm in a.arms:  # arms take turns round by round, so machine load hits both alike
            name = f"{report['molecule']}-{arm}-s{seed}-{int(time.time())}"
            cid = create_campaign(store, _config(a, name, pool, seed, arm, rounds))
            state[arm] = {"campaign_id": cid, "n": [], "errors": [], "wall_s": []}
        for index in range(rounds):
            for arm in a.arms:
                st = state[arm]
                cfg = _config(a, store.campaign(st["campaign_id"]).name, pool, seed, arm, rounds)
                t1 = time.perf_counter()
                cpu: dict[str, float] = {}
                plan = run_round(store, st["campaign_id"], index, cfg, cpu)
                from sapis.models import load_ensemble

                ens = load_ensemble(plan.model_dir)
                n_train = len(campaign_label_ids(store, st["campaign_id"])["train"])
                st["n"].append(n_train)
                st["errors"].append(_errors(ens, regions))
                st["wall_s"].append(round(time.perf_counter() - t1, 1))
                st["model_dir"] = str(plan.model_dir)
                st.setdefault("step_cpu_s", []).append(cpu)
                all_ = st["errors"][-1]["all"]
                print(
                    f"[{time.perf_counter() - t0:6.0f}s] {report['molecule']} seed {seed} round {index} {arm:6s} "
                    f"N={n_train:3d} force MAE {all_['f_mae']:.1f} p95 {all_['f_p95']:.1f} meV/Å",
                    flush=True,
                )
            _save(report | {"partial": {"seed": seed, "round": index, "arms": state}}, a.out)  # a cut run keeps this
        for arm in a.arms:
            st = state[arm]
            st["md"] = _md_stability(Path(st["model_dir"]), starts[0], a, seed)
            print(f"  {arm} MD at {a.md_temperature:.0f} K: {st['md']['share_physical']:.2f} physical", flush=True)
        report["runs"].append({"seed": seed, "arms": state})
        report["summary"] = summarise(report)
        report["wall_s"] = round(time.perf_counter() - t0, 1)
        _save(report, a.out)
    return report


def _labels_to_reach(n: list[float], err: list[float], target: float) -> float | None:
    """Labels where the (log-log interpolated) curve first reaches ``target``; None if it never does."""
    for i, (ni, ei) in enumerate(zip(n, err, strict=True)):
        if ei <= target:
            if i == 0:
                return float(ni)
            n0, e0 = n[i - 1], err[i - 1]
            f = (np.log(e0) - np.log(target)) / (np.log(e0) - np.log(ei))
            return float(np.exp(np.log(n0) + f * (np.log(ni) - np.log(n0))))
    return None


def _mean_or_none(mds: list[dict[str, Any] | None]) -> float | None:
    shares = [m["share_physical"] for m in mds if m]
    return float(np.mean(shares)) if shares else None


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """Per arm: mean curves per region; labels to reach random's final MAE; ratios active/random; MD share."""
    runs = report["runs"]
    arms = list(runs[0]["arms"])
    length = min(len(r["arms"][arm]["n"]) for r in runs for arm in arms)  # a run cut short: common rounds only
    runs = [
        {
            **r,
            "arms": {
                arm: {**st, "n": st["n"][:length], "errors": st["errors"][:length]} for arm, st in r["arms"].items()
            },
        }
        for r in runs
    ]
    regions = list(runs[0]["arms"][arms[0]]["errors"][0])
    out: dict[str, Any] = {"n_seeds": len(runs), "rounds": length, "arms": {}}
    for arm in arms:
        n = np.mean([r["arms"][arm]["n"] for r in runs], axis=0).tolist()
        curves = {
            reg: {
                key: np.array([[e[reg][key] for e in r["arms"][arm]["errors"]] for r in runs]).tolist()
                for key in ("f_mae", "f_p95")
            }
            for reg in regions
        }
        out["arms"][arm] = {
            "n": n,
            "mean": {reg: {key: np.mean(v, axis=0).tolist() for key, v in c.items()} for reg, c in curves.items()},
            "per_seed": curves,
            "md_share_physical": _mean_or_none([r["arms"][arm].get("md") for r in runs]),
            "md_share_physical_per_seed": [(r["arms"][arm].get("md") or {}).get("share_physical") for r in runs],
        }
    baselines = set(BASELINES.values()) | {"random"}
    rules = {
        arm: _versus_random(out["arms"][arm], out["arms"][base], len(runs), regions) | {"baseline": base}
        for arm in arms
        if arm not in baselines and (base := BASELINES.get(arm, "random")) in out["arms"]
    }
    if rules:
        out["rules"] = rules
        # the product's default rule at the top level (the schema readers check), else the run's first rule
        head = "active" if "active" in rules else next(iter(rules))
        out.update(rules[head] | {"headline_rule": head})
    return out


def _versus_random(act: dict[str, Any], rnd: dict[str, Any], n_runs: int, regions: list[str]) -> dict[str, Any]:
    """One rule's arm against the random arm: labels to random's final MAE, p95 and MAE ratios, per seed too."""
    target = rnd["mean"]["all"]["f_mae"][-1]  # what random reaches with the whole budget
    per_seed = []
    for s in range(n_runs):
        la = _labels_to_reach(act["n"], act["per_seed"]["all"]["f_mae"][s], target)
        lr = _labels_to_reach(rnd["n"], rnd["per_seed"]["all"]["f_mae"][s], target)
        per_seed.append({"active": la, "random": lr})
    la = _labels_to_reach(act["n"], act["mean"]["all"]["f_mae"], target)
    lr = _labels_to_reach(rnd["n"], rnd["mean"]["all"]["f_mae"], target)
    p95_seed = [
        a_[-1] / r_[-1] for a_, r_ in zip(act["per_seed"]["all"]["f_p95"], rnd["per_seed"]["all"]["f_p95"], strict=True)
    ]
    mae_seed = [
        a_[-1] / r_[-1] for a_, r_ in zip(act["per_seed"]["all"]["f_mae"], rnd["per_seed"]["all"]["f_mae"], strict=True)
    ]
    ratio = act["mean"]["all"]["f_mae"][-1] / rnd["mean"]["all"]["f_mae"][-1]
    spread = float(np.std(mae_seed)) if len(mae_seed) > 1 else None
    return {
        "target_f_mae_meV_A": target,
        "labels_to_target": {"active": la, "random": lr, "per_seed": per_seed},
        # None: the rule never reached random's final MAE within the budget (ratio > 1)
        "labels_to_target_ratio": None if la is None or lr is None else la / lr,
        "p95_ratio": act["mean"]["all"]["f_p95"][-1] / rnd["mean"]["all"]["f_p95"][-1],
        "p95_ratio_per_seed": p95_seed,
        "final_mae_ratio": ratio,
        "final_mae_ratio_per_seed": mae_seed,
        # the gap counts only when it is larger than the seed-to-seed spread of the per-seed ratios
        "final_mae_ratio_seed_sd": spread,
        "gap_exceeds_seed_spread": None if spread is None else bool(abs(ratio - 1.0) > spread),
        "md_share_physical": {"active": act["md_share_physical"], "random": rnd["md_share_physical"]},
        "per_region_final_mae_ratio": {
            reg: act["mean"][reg]["f_mae"][-1] / rnd["mean"][reg]["f_mae"][-1] for reg in regions
        },
    }


def _save(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))


def merge(paths: list[Path], out: Path) -> dict[str, Any]:
    """One JSON with every molecule's summary (and its runs), plus the plot of error vs labels per region."""
    molecules: dict[str, dict[str, Any]] = {}
    carried: dict[str, dict[str, Any]] = {}
    for p in paths:  # files of one molecule (seeds run in separate processes) are joined
        r = json.loads(p.read_text())
        if "molecules" in r:  # an earlier merged result: its rows are carried over as they are
            for m, row in r["molecules"].items():
                carried[m] = row | {"carried_over": row.get("carried_over") or f"from {p.name}, not re-measured"}
            continue
        if not r["runs"] and r.get("partial"):  # cut short before its seed finished: the rounds it has
            part = r["partial"]
            r["runs"] = [{"seed": part["seed"], "arms": part["arms"], "cut_short_after_round": part["round"]}]
        if r["molecule"] in molecules:
            m = molecules[r["molecule"]]
            m["runs"] = sorted(m["runs"] + r["runs"], key=lambda x: x["seed"])
            m["wall_s"] = max(m.get("wall_s") or 0, r.get("wall_s") or 0)
            m["machines"].append(r["machine"])
        else:
            molecules[r["molecule"]] = r | {"machines": [r["machine"]]}
    for r in molecules.values():
        r["summary"] = summarise(r)
    report = {
        "benchmark": "active_learning",
        "sources": [str(p) for p in paths],
        "molecules": {
            m: {
                k: r["summary"].get(k)
                for k in (
                    "labels_to_target_ratio",
                    "p95_ratio",
                    "final_mae_ratio",
                    "md_share_physical",
                    "target_f_mae_meV_A",
                    "labels_to_target",
                    "p95_ratio_per_seed",
                    "final_mae_ratio_per_seed",
                    "per_region_final_mae_ratio",
                    "n_seeds",
                    "rules",
                    "headline_rule",
                )
            }
            | {"summary": r["summary"], "budget": r["budget"], "machines": r["machines"], "wall_s": r.get("wall_s")}
            for m, r in molecules.items()
        }
        | {m: row for m, row in carried.items() if m not in molecules},
    }
    _save(report, out)
    plot(report, out.with_suffix(".png"))
    return report


def _f(x: float | None, fmt: str = "{:.3g}") -> str:
    return "–" if x is None else fmt.format(x)


def table(report: dict[str, Any]) -> str:
    """The README table: per molecule and rule, final errors against random, the ratios and the MD stability."""
    rows = [
        "| molecule | rule | labels | force MAE, all regions: rule / random (meV/Å) | MAE ratio per seed | "
        "labels to random's final MAE, rule / random | p95 force error ratio | per-region MAE ratio (md300, md600, "
        "md1200, torsion, reactive) | 600 K MD physical: rule / random |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m, r in report["molecules"].items():
        s = r["summary"]
        for rule, v in (s.get("rules") or {}).items():
            act, rnd = s["arms"][rule], s["arms"][v.get("baseline", "random")]
            per = v.get("per_region_final_mae_ratio") or {}
            regions = ", ".join(_f(per.get(k), "{:.2f}") for k in ("md300", "md600", "md1200", "torsion", "reactive"))
            seeds = ", ".join(_f(x, "{:.2f}") for x in v.get("final_mae_ratio_per_seed", []))
            md = v.get("md_share_physical") or {}
            name = f"{m} (carried over)" if r.get("carried_over") else m
            rows.append(
                f"| {name} | {rule} | {act['n'][-1]:.0f} | {act['mean']['all']['f_mae'][-1]:.0f} / "
                f"{rnd['mean']['all']['f_mae'][-1]:.0f} | {seeds} | "
                f"{_f(v.get('labels_to_target_ratio'), '{:.2f}')} | {_f(v.get('p95_ratio'), '{:.2f}')} | {regions} | "
                f"{_f(md.get('active'), '{:.0%}')} / {_f(md.get('random'), '{:.0%}')} |"
            )
    return "\n".join(rows)


def plot(report: dict[str, Any], path: Path) -> Path:
    from matplotlib.figure import Figure

    # the rows measured in this run (carried-over rows keep the plot of their own run, in git history): a plot of
    # every run at once (25 rows by now) could not be read at a glance
    mols = [m for m, r in report["molecules"].items() if not r.get("carried_over")] or list(report["molecules"])
    regions = list(next(iter(report["molecules"][mols[0]]["summary"]["arms"].values()))["mean"])
    fig = Figure(figsize=(2.6 * len(regions), 2.4 * len(mols)), dpi=100)
    axes = fig.subplots(len(mols), len(regions), squeeze=False)
    for i, m in enumerate(mols):
        arms = report["molecules"][m]["summary"]["arms"]
        for j, reg in enumerate(regions):
            ax = axes[i][j]
            for arm, s in arms.items():
                if reg not in s["mean"]:
                    continue
                # one colour per rule in every panel; the random baselines grey and dashed
                baseline = arm.startswith("random")
                color = "0.4" if baseline else f"C{list(ARMS).index(arm) % 10}" if arm in ARMS else "k"
                per = np.array(s["per_seed"][reg]["f_mae"])
                ax.plot(s["n"], s["mean"][reg]["f_mae"], "o--" if baseline else "o-", color=color, label=arm, ms=3)
                ax.fill_between(s["n"], per.min(0), per.max(0), color=color, alpha=0.2)
            ax.set_yscale("log")
            ax.set_title(reg if i else f"test region: {reg}", fontsize=8)
            if i == len(mols) - 1:
                ax.set_xlabel("training labels")
            if j == 0:  # the row's run: its name without the setting in brackets (the legend names the arms)
                ax.set_ylabel(f"{m.split(' (')[0]}\nforce MAE (meV/Å)", fontsize=8)
            ax.tick_params(labelsize=7)
    for i in range(len(mols)):
        axes[i][0].legend(fontsize=7)
    fig.suptitle("selection rules vs random (this run's rows); band: seed min-max", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    if a.merge:
        print(table(merge(a.merge, a.out)))
        return 0
    a.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SAPIS_HOME", str(a.work))  # campaign artifacts (checkpoints, plots) go to scratch
    report = run(a)
    print(json.dumps({k: v for k, v in report["summary"].items() if k != "arms"}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
