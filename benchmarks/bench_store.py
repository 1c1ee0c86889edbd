"""Store operations at growing size on SQLite and PostgreSQL: is every bulk operation linear in the rows?

For each backend and each N (default 10k and 100k structures) on a fresh database:
  submit   ``Store.submit_pool`` of N structures with their labels imported (validation, hashing, de-dup, insert)
  resubmit the same N again (everything found by content hash: nothing new)
  enqueue  ``Store.enqueue_labels`` of the N configurations at a second level (N pending labels)
  claim    ``Store.claim_labels`` one at a time, 500 claims at that level, from the queue of N (ms per claim:
           flat if indexed); ``claim_any`` the same without naming a level (the worker's default)
  export   ``Store.export_extxyz`` of the pool's N done labels (streamed to the file)
The baseline of each row is the same operation at the smallest N in the same run: linear scaling shows as a
time ratio equal to the size ratio (10 for 10k -> 100k); the exponent log(t2/t1)/log(N2/N1) is reported.

The structures are the frames of --data (rMD17 ethanol train.xyz), each copied with small random displacements
until N distinct structures exist, so hashing and validation do real work.

    nice -n 5 .venv/bin/python benchmarks/bench_store.py --data ../shared/data/rmd17_ethanol/train.xyz \\
        --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parents[1]
PG = os.environ.get("SAPIS_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def make_frames(data: Path, n: int, seed: int = 0, start: int = 0) -> list[Any]:
    """Structures ``start .. start + n - 1`` of the run (a block's seed is its own: any block can be remade)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    base = _base_frames(data)
    rng = np.random.default_rng([seed, start])
    out = []
    for k in range(start, start + n):
        src = base[k % len(base)]
        a = src.copy()
        a.positions = a.positions + rng.normal(scale=0.01, size=a.positions.shape)
        e, f = src.get_potential_energy(), src.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        out.append(a)
    return out


_BASE: dict[Path, list[Any]] = {}


def _base_frames(data: Path) -> list[Any]:
    import ase.io

    if data not in _BASE:
        _BASE[data] = ase.io.read(data, ":")
    return _BASE[data]


class Database:
    """A fresh SQLite file or a private PostgreSQL schema, removed afterwards."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.backend = backend
        if backend == "sqlite":
            self.url = f"sqlite:///{workdir / f'bench_{uuid.uuid4().hex[:8]}.db'}"
            self.schema = None
        else:
            from sqlalchemy import create_engine, text

            self.schema = f"sapis_bench_{uuid.uuid4().hex[:10]}"
            self.admin = create_engine(PG)
            with self.admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{self.schema}"'))
            sep = "&" if "?" in PG else "?"
            self.url = f"{PG}{sep}options=-csearch_path%3D{self.schema}"

    def drop(self) -> None:
        if self.schema is not None:
            from sqlalchemy import text

            with self.admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
            self.admin.dispose()


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_one(
    backend: str, frames: Any, n: int, n_claims: int, workdir: Path, pool_size: int | None = None
) -> dict[str, Any]:
    """Time every operation on a fresh database of ``n`` structures. ``frames(start, count)`` makes structures;
    with ``pool_size`` the rows arrive as pools of that many (a store growing to ``n`` by repeated submissions,
    and no more than one pool's structures in memory at a time), each submission timed on its own."""
    from sapis.storage import Store

    size = pool_size or n
    blocks = [(k, min(size, n - k)) for k in range(0, n, size)]
    db = Database(backend, workdir)
    try:
        store = Store(db.url)
        t_submit = t_resubmit = 0.0
        per_pool: list[float] = []
        ids: list[int] = []
        for start, count in blocks:
            chunk = frames(start, count)
            name = "bench" if len(blocks) == 1 else f"bench-{start // size}"
            t, rep = timed(partial(store.submit_pool, chunk, name, label_fingerprint="bench-ref"))
            assert rep.n_new == count and rep.n_labels == count, rep
            t_submit += t
            per_pool.append(t)
            t, rep2 = timed(partial(store.submit_pool, chunk, name, label_fingerprint="bench-ref"))
            assert rep2.n_new == 0 and rep2.n_labels == 0, rep2
            t_resubmit += t
            chunk = []  # one pool's structures in memory at a time
            ids.extend(int(a.info["config_id"]) for a in store.pool_atoms(name))
        t_enqueue, n_new = timed(lambda: store.enqueue_labels(ids, "bench-queue", {"name": "bench-queue"}))
        assert n_new == n
        t0 = time.perf_counter()
        for _ in range(n_claims):
            (_claim,) = store.claim_labels("bench-worker", n=1, lease_seconds=600, fingerprint="bench-queue")
        t_claims = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(n_claims):
            (_claim,) = store.claim_labels("bench-worker", n=1, lease_seconds=600)
        t_claims_any = time.perf_counter() - t0
        out = workdir / f"export_{backend}_{n}.extxyz"
        pool = "bench" if len(blocks) == 1 else None  # every pool: the whole store
        t_export, n_out = timed(lambda: store.export_extxyz(out, pool=pool, fingerprint="bench-ref"))
        assert n_out == n
        out.unlink()
        store.dispose()
    finally:
        db.drop()
    row = {
        "backend": backend,
        "n": n,
        "submit_s": t_submit,
        "resubmit_s": t_resubmit,
        "enqueue_s": t_enqueue,
        "claim_ms_each": 1e3 * t_claims / n_claims,
        "claim_any_ms_each": 1e3 * t_claims_any / n_claims,
        "export_s": t_export,
        "pool_size": size,
        "submit_s_per_pool": per_pool,  # flat when a submission's cost does not grow with the store
        "load_average_after": list(os.getloadavg()),  # other work on the machine while this row ran
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="extxyz with reference labels (rMD17 train.xyz)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    ap.add_argument("--claims", type=int, default=500, help="claims timed per database")
    ap.add_argument(
        "--pool-size",
        type=int,
        default=None,
        help="submit the N rows as pools of this many (a store growing by repeated submissions; bounds the "
        "memory a 1M run needs); default: one pool of N",
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "store.json")
    args = ap.parse_args()
    sizes = sorted(args.sizes)
    t_all = time.perf_counter()
    info = machine(threads=1, sizes=sizes, backends=args.backends, claims=args.claims, data=str(args.data))
    info["pool_size"] = args.pool_size
    rows = []

    def frames(start: int, count: int) -> list[Any]:
        return make_frames(args.data, count, start=start)

    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            for backend in args.backends:  # both backends at each size, so load hits both alike
                rows.append(run_one(backend, frames, n, args.claims, Path(tmp), args.pool_size))
    ops = ("submit_s", "resubmit_s", "enqueue_s", "claim_ms_each", "claim_any_ms_each", "export_s")
    scaling = []
    for backend in args.backends:
        mine = [r for r in rows if r["backend"] == backend]
        base = mine[0]
        for r in mine[1:]:
            size_ratio = r["n"] / base["n"]
            entry: dict[str, Any] = {"backend": backend, "n": r["n"], "baseline_n": base["n"]}
            for op in ops:
                ratio = r[op] / base[op] if base[op] > 0 else float("nan")
                entry[f"{op}_ratio"] = ratio
                entry[f"{op}_exponent"] = math.log(ratio) / math.log(size_ratio) if ratio > 0 else float("nan")
            scaling.append(entry)
    result = {"machine": info, "wall_s": time.perf_counter() - t_all, "rows": rows, "scaling": scaling}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(scaling, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
