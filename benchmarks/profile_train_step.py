"""Profile: where one training step of a sapis model goes (one thread, float32), by torch operator, with and
without the split rewrite of e3nn's generated code (models/_fx_split.py), timed side by side.

The step is the one ``models/train.py`` takes: energy and forces (double backward), the weighted loss, backward,
gradient clipping and an AdamW update, on a batch of labelled structures. Not a test.

    .venv/bin/python benchmarks/profile_train_step.py --size M --batch-size 5 --out benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import machine  # benchmarks/ is on sys.path when a script runs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rmd17_ethanol"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, default=DATA / "train.xyz", help="labelled extxyz")
    p.add_argument("--size", default="M", help="sapis preset")
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--steps", type=int, default=30, help="timed steps of each variant (after 3 warm-up steps)")
    p.add_argument("--profile-steps", type=int, default=10, help="profiled steps of each variant")
    p.add_argument("--top", type=int, default=20, help="operators listed")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "profile_train_step.json")
    args = p.parse_args()

    from ase.io import read
    from torch.profiler import ProfilerActivity, profile

    from sapis.models import ModelConfig, _fx_split
    from sapis.models.checkpoint import build_model
    from sapis.models.ensemble import model_spec
    from sapis.models.graph import collate, to_graph
    from sapis.models.transformer import energy_and_forces
    from sapis.runtime import seed_everything, set_threads

    set_threads(1)
    seed_everything(0)
    cfg = ModelConfig.size(args.size)
    frames = read(args.train, index=f":{args.batch_size}")
    graphs = [to_graph(a, cfg.cutoff) for a in frames]
    spec = model_spec(graphs, "sapis", cfg, None)
    batch = collate(graphs, torch.float32, "cpu")
    models = {"split": build_model(spec)}  # the product: one torch.split per input of e3nn's generated code
    _fx_split.ENABLED = False
    models["e3nn_slices"] = build_model(spec)  # e3nn's own code: one slice per irrep
    _fx_split.ENABLED = True
    models["e3nn_slices"].load_state_dict(models["split"].state_dict())

    def make_step(model: torch.nn.Module) -> Callable[[], None]:
        params = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3, amsgrad=True)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            energy, forces, _ = energy_and_forces(model, batch, training=True)
            de = (energy - batch.energy) / batch.n_atoms.to(energy.dtype)
            loss = de.pow(2).mean() + 100 * (forces - batch.forces).pow(2).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()

        model.train()
        return step

    steps = {k: make_step(m) for k, m in models.items()}
    for step in steps.values():
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}  # wall s
    cpu: dict[str, list[float]] = {k: [] for k in steps}  # process CPU s (not counting other processes' turns)
    for r in range(args.steps):  # interleaved, the order alternating, so load changes hit both alike
        for k in list(steps)[:: 1 if r % 2 else -1]:
            t, c = time.perf_counter(), time.process_time()
            steps[k]()
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    profiles = {}
    for k, step in steps.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.profile_steps):
                step()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
        profiles[k] = {
            "operator_calls_per_step": sum(e.count for e in events) / args.profile_steps,
            "top_ops_by_self_cpu": [
                {
                    "op": e.key,
                    "self_cpu_share": e.self_cpu_time_total / total,
                    "calls_per_step": e.count / args.profile_steps,
                }
                for e in rows
            ],
        }

    def ms(xs: list[float]) -> dict[str, float]:
        q = np.quantile(xs, [0.25, 0.5, 0.75]) * 1000
        return {"median": float(q[1]), "q25": float(q[0]), "q75": float(q[2]), "min": 1000 * min(xs)}

    ratios = [a / b for a, b in zip(times["split"], times["e3nn_slices"], strict=True)]
    cpu_ratios = [a / b for a, b in zip(cpu["split"], cpu["e3nn_slices"], strict=True)]
    result: dict[str, Any] = {
        "benchmark": "one training step (energy+forces, loss, backward, clip, AdamW), one thread, float32; "
        "e3nn's per-irrep slices against one split per input (models/_fx_split.py), interleaved",
        "machine": machine(torch_threads=1),
        "model": cfg.model_dump(),
        "n_params": sum(q.numel() for q in models["split"].parameters()),
        "batch": {"structures": args.batch_size, "atoms": len(batch.numbers), "edges": batch.edge_index.shape[1]},
        "steps_timed": args.steps,
        "step_ms_wall": {k: ms(v) for k, v in times.items()},
        "step_ms_cpu": {k: ms(v) for k, v in cpu.items()},
        "split_over_slices_per_pair_wall": {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
        },
        "split_over_slices_per_pair_cpu": {
            "median": statistics.median(cpu_ratios),
            "min": min(cpu_ratios),
            "max": max(cpu_ratios),
        },
        "profiles": profiles,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for k, v in result["step_ms_cpu"].items():
        print(f"{k}: step CPU {v['median']:.1f} ms (quartiles {v['q25']:.1f}-{v['q75']:.1f})")
        for r in profiles[k]["top_ops_by_self_cpu"][:8]:
            print(f"  {r['op']:<40} {100 * r['self_cpu_share']:5.1f} %  {r['calls_per_step']:7.1f} calls/step")
    print(f"split/slices per interleaved pair, CPU: {result['split_over_slices_per_pair_cpu']['median']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
