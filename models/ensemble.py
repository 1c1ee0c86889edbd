"""Ensembles: train M members (seeds + bootstrap resamples), load them, predict mean and disagreement."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from sapis.keys import MAX_ENERGY_PER_ATOM
from sapis.models.config import MaceConfig, ModelConfig, TrainConfig, model_config_for


@dataclass
class MemberResult:
    """One trained member: checkpoint, size, cost and learning curve."""

    index: int
    path: Path
    sha256: str
    n_params: int
    train_flops: float
    wall_s: float
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)


@dataclass
class EnsembleResult:
    """A trained ensemble; ``out_dir/ensemble.json`` describes it."""

    out_dir: Path
    members: list[MemberResult]
    architecture: str = "sapis"


def _prepare(
    train: Sequence[Atoms], valid: Sequence[Atoms] | None, cutoff: float, cfg: TrainConfig, baseline: str = "none"
) -> tuple[list, list]:
    """Graphs with labels (minus the ``baseline``'s energy and forces, computed once per structure)."""
    from sapis.errors import InputError
    from sapis.models.graph import to_graph
    from sapis.models.priors import baseline_energy_forces

    def graphs(atoms_list: Sequence[Atoms], name: str) -> list:
        out = []
        for k, atoms in enumerate(atoms_list):
            if not np.all(np.isfinite(atoms.positions)):
                raise InputError(name, "positions contain NaN or inf", k)
            g = to_graph(atoms, cutoff)
            if g.energy is None or g.forces is None:
                raise InputError(name, "no reference energy/forces (REF_energy/REF_forces or energy/forces)", k)
            if problem := label_problem(g.energy, g.forces, len(atoms)):
                raise InputError(name, problem, k)
            out.append(g)
        if baseline != "none":
            try:
                base = baseline_energy_forces(atoms_list, baseline)
            except InputError as exc:
                raise InputError(name, exc.problem, exc.frame) from exc
            for g, (e, f) in zip(out, base, strict=True):
                assert g.energy is not None and g.forces is not None  # checked above
                g.energy, g.forces = g.energy - e, g.forces - f
        return out

    if not train:
        raise InputError("training set", "is empty")
    tr = graphs(train, "training set")
    if valid:
        return tr, graphs(valid, "validation set")
    n_valid = round(cfg.valid_fraction * len(tr)) if len(tr) >= 10 else 0
    if n_valid == 0:
        return tr, tr
    perm = np.random.default_rng(cfg.seed).permutation(len(tr))
    return _keep_elements_in_training([tr[k] for k in perm[n_valid:]], [tr[k] for k in perm[:n_valid]])


def _keep_elements_in_training(tr: list, va: list) -> tuple[list, list]:
    """Move held-out graphs with an element the training part lacks into it: the model's elements are those of
    its training data, so a split must not leave one only in validation."""
    seen = {int(z) for g in tr for z in g.numbers}
    kept = []
    for g in va:
        if {int(z) for z in g.numbers} <= seen:
            kept.append(g)
        else:
            tr.append(g)
            seen |= {int(z) for z in g.numbers}
    return tr, kept or tr


def label_problem(energy: float | None, forces: np.ndarray | None, n_atoms: int) -> str | None:
    """What is wrong with reference labels for a structure of ``n_atoms`` atoms, naming the field (None: fine)."""
    if energy is None or forces is None:
        return "no reference energy and forces (REF_energy/REF_forces or energy/forces)"
    if not np.isfinite(energy):
        return f"reference energy is {energy} (not finite)"
    if abs(energy) > MAX_ENERGY_PER_ATOM * max(n_atoms, 1):
        limit = f"at most {MAX_ENERGY_PER_ATOM:g} eV per atom"
        return f"reference energy {energy:.6g} eV is absurd for {n_atoms} atoms ({limit})"
    if np.shape(forces) != (n_atoms, 3):
        return f"reference forces have shape {np.shape(forces)}, expected ({n_atoms}, 3)"
    if not np.all(np.isfinite(forces)):
        return "reference forces contain NaN or inf"
    return None


def charge_state(atoms: Atoms, source: str = "structure", frame: int | None = None) -> tuple[int, int]:
    """(charge, multiplicity) of ``atoms.info``, read as the store reads them (:func:`sapis.chem.charge_multiplicity`:
    ``charge``; ``multiplicity``, ``spin_multiplicity`` or fairchem's ``spin``, all 2S+1); defaults as the store's:
    neutral, then the lowest multiplicity for the electron count (1 for even, 2 for odd). InputError (``source``,
    ``frame``) for a non-integer value or spin keys that disagree."""
    from sapis.chem import charge_multiplicity

    charge, mult = charge_multiplicity(atoms, source, frame)
    return charge, mult if mult is not None else 1 + (int(atoms.numbers.sum()) - charge) % 2


def charge_states(frames: Sequence[Atoms], source: str) -> dict[str, list[int]]:
    """{formula: [charge, multiplicity]} of ``frames``; InputError naming two frames where one formula comes
    at two charge states (the model has no charge input: it would learn their average)."""
    from sapis.errors import InputError

    seen: dict[str, tuple[int, int, int]] = {}
    for k, atoms in enumerate(frames):
        formula, (q, m) = atoms.get_chemical_formula(), charge_state(atoms, source, k)
        q0, m0, k0 = seen.setdefault(formula, (q, m, k))
        if (q, m) != (q0, m0):
            raise InputError(
                source,
                f"{formula} has charge {q}, multiplicity {m} here but charge {q0}, multiplicity {m0} in frame {k0}: "
                "the model has no charge input, so train one model per charge state",
                k,
            )
    return {f: [q, m] for f, (q, m, _) in seen.items()}


def charge_state_warning(ensemble: Any, frames: Sequence[Atoms], source: str, first: int = 0) -> str | None:
    """One line naming the frames of ``frames`` whose formula the ensemble was trained on at another charge or
    multiplicity (None when there are none, or for a checkpoint that predates this record); ``frames[0]`` is
    frame ``first`` of ``source``."""
    trained = getattr(ensemble.models[0], "charge_states", None) or {}
    odd = []
    for k, a in enumerate(frames, start=first):
        f = a.get_chemical_formula()
        if f in trained and list(state := charge_state(a, source, k)) != list(trained[f]):
            odd.append((k, f, state, trained[f]))
    if not odd:
        return None
    k, f, (q, m), (q0, m0) = odd[0]
    more = f" and {len(odd) - 1} more" if len(odd) > 1 else ""
    return (
        f"sapis: warning: {source}, frame {k}{more}: {f} at charge {q}, multiplicity {m}, but the model was trained "
        f"on {f} at charge {q0}, multiplicity {m0} only (it has no charge input): its predictions there are not "
        "for this charge state"
    )


def model_spec(
    train_graphs: Sequence[Any],
    architecture: str | None,
    model: ModelConfig | MaceConfig | Mapping[str, Any] | None,
    e0s: Mapping[int, float] | None,
) -> dict[str, Any]:
    """Architecture, config and data-derived constants (elements, E0s, scale, shift, avg. neighbours)."""
    from sapis.errors import ConfigError
    from sapis.models.graph import fit_e0s

    elements = sorted({int(z) for g in train_graphs for z in g.numbers})
    cfg = model_config_for(model, architecture)
    baseline = cfg.baseline
    if e0s:
        from sapis.models.priors import isolated_atom_baseline

        missing = [z for z in elements if z not in e0s]
        if missing:
            raise ConfigError(f"isolated-atom energies missing for elements {missing}")
        base0 = isolated_atom_baseline(elements, baseline)  # Δ: the model's atoms are E0 - E0_baseline
        e0 = {z: float(e0s[z]) - base0[z] for z in elements}
    else:
        e0 = fit_e0s(train_graphs, elements)
    resid = [(g.energy - sum(e0[int(z)] for z in g.numbers)) / len(g.numbers) for g in train_graphs]
    forces = np.concatenate([g.forces.ravel() for g in train_graphs])
    rms = float(np.sqrt(np.mean(forces**2))) if forces.size else 1.0
    n_edges = sum(g.edge_index.shape[1] for g in train_graphs)
    n_nodes = sum(len(g.numbers) for g in train_graphs)
    cfg_dict = cfg.model_dump()
    return {
        "architecture": cfg.architecture,
        "baseline": cfg.baseline,
        "config": cfg_dict,
        "elements": elements,
        "e0s": e0,
        "scale": rms if rms > 1e-8 else 1.0,
        "shift": float(np.mean(resid)),
        "avg_num_neighbors": n_edges / max(n_nodes, 1),
    }


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _member_process(parent: int) -> None:
    """Set-up of a member process: the parent decides about Ctrl-C (it stops the members), and a member dies
    with its parent instead of training on as an orphan."""
    import signal

    from sapis.runtime import die_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)


def _stop_members(pool: Any) -> None:
    """Terminate the member processes of ``pool`` (finished members are already recorded and kept)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # Python < 3.14: no terminate_workers()
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(5)
    pool.shutdown(wait=True, cancel_futures=True)  # the pool is broken now: returns at once, queues closed


def _member_job(args: tuple) -> dict[str, Any]:
    """Entry point of a member process (spawn): one thread, then train (or reuse a finished member)."""
    spec, tr, va, cfg, seed, path = args
    if (done := finished_member(path, member_key(spec, tr, va, cfg, seed))) is not None:
        return done
    from sapis.runtime import set_threads

    set_threads(cfg.threads)
    from sapis.models.train import train_member

    return _record_finished(path, member_key(spec, tr, va, cfg, seed), train_member(spec, tr, va, cfg, seed, path))


def member_key(spec: Mapping[str, Any], tr: Sequence[Any], va: Sequence[Any], cfg: TrainConfig, seed: int) -> str:
    """A digest of everything a member's training depends on: model spec, training config, seed and data."""
    import hashlib

    h = hashlib.sha256()
    h.update(
        json.dumps(
            {"spec": spec, "cfg": cfg.model_dump(mode="json"), "seed": seed}, sort_keys=True, default=str
        ).encode()
    )
    for part in (tr, va):
        h.update(b"|")
        for g in part:
            for arr in (g.numbers, g.positions, g.cell, g.forces):
                h.update(np.ascontiguousarray(arr).tobytes() if arr is not None else b"-")
            h.update(repr(g.energy).encode())
    return h.hexdigest()


def _done_path(path: Path) -> Path:
    return path.with_name(path.name + ".done.json")


def finished_member(path: Path, key: str) -> dict[str, Any] | None:
    """The recorded result of a member whose checkpoint was fully written by the same job, else None.

    A run killed after some members finished trains only the others again: a member counts as finished when
    its checkpoint exists, its ``.done.json`` names the same job digest, and the file's sha256 still matches.
    """
    from sapis.models.checkpoint import sha256

    done = _done_path(path)
    try:
        rec = json.loads(done.read_text())
        if rec.get("key") == key and path.exists() and sha256(path) == rec.get("sha256"):
            return dict(rec["result"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _record_finished(path: Path, key: str, result: dict[str, Any]) -> dict[str, Any]:
    from sapis.models.checkpoint import sha256

    tmp = _done_path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "sha256": sha256(path), "result": result}, default=float))
    tmp.replace(_done_path(path))
    return result


def train_ensemble(
    train_set: Sequence[Atoms],
    valid: Sequence[Atoms] | None,
    out_dir: Path | str,
    /,
    members: int = 4,
    model: ModelConfig | MaceConfig | Mapping[str, Any] | None = None,
    train: TrainConfig | None = None,
    architecture: str | None = None,
    e0s: Mapping[int, float] | None = None,
    progress: bool = True,
    train_config: TrainConfig | None = None,
    states: Mapping[str, Sequence[int]] | None = None,
) -> EnsembleResult:
    """Train ``members`` models on ``train_set`` (member i: seed + i and, when M > 1, a bootstrap resample).

    ``train`` (alias ``train_config``) is the :class:`TrainConfig`; the first three arguments are positional.
    Members run in separate processes when ``train.workers > 1``, sequentially otherwise. ``model`` is a
    :class:`ModelConfig` or :class:`MaceConfig` (its ``architecture`` decides), or a dict of either; an explicit
    ``architecture="mace"`` maps a ModelConfig onto a MaceConfig (see :func:`model_config_for`). With
    ``train.warm_start`` set to a previous ensemble directory, member i starts from member i there (every
    tensor whose name and shape match; the rest starts fresh). ``states`` is ``charge_states(train_set, ...)``
    when the caller has already computed it (it is computed here otherwise): a checkpoint records it.
    """
    from sapis.errors import ConfigError
    from sapis.models.checkpoint import sha256

    cfg = train or train_config or TrainConfig()
    if members < 1:
        raise ConfigError("an ensemble needs at least one member")
    out = Path(out_dir)
    model_cfg = model_config_for(model, architecture)
    if states is None:
        states = charge_states(train_set, "training set")
    tr, va = _prepare(train_set, valid, model_cfg.cutoff, cfg, model_cfg.baseline)
    recorded = {f: [int(x) for x in state] for f, state in states.items()}  # plain containers: weights_only
    spec = {**model_spec(tr, None, model_cfg, e0s), "charge_states": recorded}
    out.mkdir(parents=True, exist_ok=True)  # only once the data passed every check
    jobs = []
    n_gpus = _gpu_count()
    for i in range(members):
        seed = cfg.seed + i
        rng = np.random.default_rng(10_000 + seed)
        sample = [tr[k] for k in rng.integers(0, len(tr), len(tr))] if members > 1 and cfg.bootstrap else list(tr)
        mcfg = cfg
        if cfg.warm_start is not None and Path(cfg.warm_start).is_dir():
            own = Path(cfg.warm_start) / f"member_{i}.pt"
            mcfg = cfg.model_copy(update={"warm_start": own if own.exists() else Path(cfg.warm_start)})
        if cfg.workers > 1 and n_gpus > 1 and cfg.device in ("auto", "cuda"):  # one member per GPU
            mcfg = mcfg.model_copy(update={"device": f"cuda:{i % n_gpus}"})
        jobs.append((spec, sample, va, mcfg, seed, out / f"member_{i}.pt"))
    t0 = time.perf_counter()
    if cfg.workers > 1 and members > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(
            min(cfg.workers, members),
            mp_context=mp.get_context("spawn"),
            initializer=_member_process,
            initargs=(os.getpid(),),
        ) as pool:
            try:
                results = list(pool.map(_member_job, jobs))
            except BaseException:  # Ctrl-C, SIGTERM, a failed member: stop the others now, not after training
                _stop_members(pool)
                raise
    else:
        results = [_train_with_progress(i, job, progress, members) for i, job in enumerate(jobs)]
    member_results = [
        MemberResult(
            index=i,
            path=Path(r["path"]),
            sha256=sha256(Path(r["path"])),
            n_params=r["n_params"],
            train_flops=r["train_flops"],
            wall_s=r["wall_s"],
            history=r["history"],
            best=r["best"],
        )
        for i, r in enumerate(results)
    ]
    desc = {
        "architecture": model_cfg.architecture,
        "spec": {**spec, "e0s": {str(k): v for k, v in spec["e0s"].items()}},
        "train_config": cfg.model_dump(mode="json"),
        "n_train": len(tr),
        "n_valid": len(va),
        "wall_s": time.perf_counter() - t0,
        "members": [{**asdict(m), "path": m.path.name, "history": m.history} for m in member_results],
    }
    (out / "ensemble.json").write_text(json.dumps(desc, indent=1))
    return EnsembleResult(out_dir=out, members=member_results, architecture=model_cfg.architecture)


def _train_with_progress(i: int, job: tuple, progress: bool, members: int) -> dict[str, Any]:
    from sapis.models.train import train_member

    spec, tr, va, cfg, seed, path = job
    key = member_key(spec, tr, va, cfg, seed)
    if (done := finished_member(path, key)) is not None:
        return done
    if not progress:
        return _record_finished(path, key, train_member(spec, tr, va, cfg, seed, path))
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]member {task.fields[member]}/{task.fields[members]}"),
        BarColumn(),
        TextColumn("epoch {task.completed:.0f}/{task.total:.0f}"),
        TextColumn("{task.fields[losses]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task("train", total=cfg.max_epochs, member=i + 1, members=members, losses="")

        def on_epoch(rec: dict[str, Any]) -> None:
            txt = f"train F {rec['train_f_mae']:.1f}"
            if "valid_f_mae" in rec:
                txt += f" | valid E {rec['valid_e_mae']:.1f} meV F {rec['valid_f_mae']:.1f} meV/Å"
            bar.update(task, completed=rec["epoch"], losses=txt)

        return _record_finished(path, key, train_member(spec, tr, va, cfg, seed, path, on_epoch=on_epoch))
