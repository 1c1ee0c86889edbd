"""Atomic graphs: neighbour lists (vesin, or a dense path for small molecules) and batching.

A batch is one flat graph: nodes of all structures concatenated, ``batch`` maps node -> structure, edges
``edge_index[0]`` (sender j) -> ``edge_index[1]`` (receiver i) with edge vector ``pos[i] - pos[j] + shift``
(the convention MACE uses, so the same batch feeds both models).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms

DENSE_MAX_ATOMS = 64  # below this (and without periodicity) an all-pairs numpy pass beats a cell list


@dataclass
class GraphData:
    """Pre-computed, device-free description of one structure (numpy)."""

    numbers: np.ndarray  # (n,) int | atomic numbers
    positions: np.ndarray  # (n, 3) float | Å
    cell: np.ndarray  # (3, 3) float | Å (zeros for molecules)
    edge_index: np.ndarray  # (2, E) int | sender, receiver
    unit_shifts: np.ndarray  # (E, 3) int | lattice translations of the sender
    energy: float | None = None  # eV
    forces: np.ndarray | None = None  # (n, 3) eV/Å


def neighbour_list(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Full neighbour list within ``cutoff``: (edge_index (2, E), unit_shifts (E, 3))."""
    pos = np.asarray(atoms.positions, dtype=np.float64)
    n = len(atoms)
    periodic = bool(np.any(atoms.pbc))
    if not periodic and n <= DENSE_MAX_ATOMS:
        d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
        mask = (d < cutoff) & ~np.eye(n, dtype=bool)
        i, j = np.nonzero(mask)
        return np.stack([j, i]).astype(np.int64), np.zeros((len(i), 3), dtype=np.int64)
    from vesin import NeighborList

    # A partly periodic structure (a slab, a wire) may have zero cell vectors along its open axes: complete
    # them (any vector will do, no shift is taken along them) so that vesin's box is invertible.
    box = np.asarray(atoms.cell.complete(), dtype=np.float64) if periodic else np.zeros((3, 3))
    i, j, s = NeighborList(cutoff=cutoff, full_list=True).compute(
        points=pos, box=box, periodic=[bool(p) for p in atoms.pbc], quantities="ijS"
    )
    # vesin: vector = pos[j] - pos[i] + S @ box; ours: pos[recv] - pos[send] + shift, so recv=j, send=i.
    return np.stack([i, j]).astype(np.int64), np.asarray(s, dtype=np.int64).reshape(-1, 3)


def reference_labels(atoms: Atoms) -> tuple[float | None, np.ndarray | None]:
    """Reference energy (eV) and forces (eV/Å): ``REF_`` keys, then plain ``energy``/``forces``, then a calc."""
    energy = atoms.info.get("REF_energy", atoms.info.get("energy"))
    forces = atoms.arrays.get("REF_forces", atoms.arrays.get("forces"))
    calc = atoms.calc
    if calc is not None and (energy is None or forces is None):
        res = getattr(calc, "results", {})
        if energy is None and "energy" in res:
            energy = res["energy"]
        if forces is None and "forces" in res:
            forces = res["forces"]
    return (
        None if energy is None else float(energy),
        None if forces is None else np.asarray(forces, dtype=np.float64),
    )


def to_graph(atoms: Atoms, cutoff: float, labels: bool = True) -> GraphData:
    """Build the neighbour list of ``atoms`` (and read its reference labels when ``labels``)."""
    ei, us = neighbour_list(atoms, cutoff)
    energy, forces = reference_labels(atoms) if labels else (None, None)
    cell = np.asarray(atoms.cell.array, dtype=np.float64) if np.any(atoms.pbc) else np.zeros((3, 3))
    return GraphData(
        numbers=np.asarray(atoms.numbers, dtype=np.int64),
        positions=np.asarray(atoms.positions, dtype=np.float64),
        cell=cell,
        edge_index=ei,
        unit_shifts=us,
        energy=energy,
        forces=forces,
    )


@dataclass
class AtomicGraph:
    """A batch of structures as one flat graph of tensors."""

    positions: torch.Tensor  # (N, 3) | Å (molecules centred on their centroid)
    numbers: torch.Tensor  # (N,) long | atomic numbers
    batch: torch.Tensor  # (N,) long | structure of each node
    ptr: torch.Tensor  # (B+1,) long | node offsets
    edge_index: torch.Tensor  # (2, E) long | sender, receiver
    shifts: torch.Tensor  # (E, 3) | Å, added to pos[recv] - pos[send]
    unit_shifts: torch.Tensor  # (E, 3) | lattice translations
    cell: torch.Tensor  # (B*3, 3) | Å
    n_graphs: int
    energy: torch.Tensor | None = None  # (B,) float64 | eV
    forces: torch.Tensor | None = None  # (N, 3) | eV/Å

    @property
    def n_atoms(self) -> torch.Tensor:
        """(B,) atoms per structure."""
        return self.ptr[1:] - self.ptr[:-1]

    def edge_vectors(self) -> torch.Tensor:
        """(E, 3) receiver minus sender, with periodic shifts, differentiable in ``positions``."""
        send, recv = self.edge_index
        return self.positions.index_select(0, recv) - self.positions.index_select(0, send) + self.shifts


def _centred(g: GraphData) -> np.ndarray:
    """(n, 3) positions of a molecule minus its centroid, in float64 (periodic structures: unchanged).

    float32 keeps ~7 digits: a molecule 1e5 Å from the origin would lose its geometry in the cast. Energy and
    forces are translation invariant, so centring first changes nothing else."""
    if g.cell.any() or not len(g.positions):
        return g.positions
    return g.positions - g.positions.mean(0)


def collate(
    graphs: Sequence[GraphData], dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> AtomicGraph:
    """Concatenate pre-computed graphs into one batch on ``device``."""
    counts = np.array([len(g.numbers) for g in graphs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    edge_index = np.concatenate([g.edge_index + o for g, o in zip(graphs, offsets[:-1], strict=True)], axis=1)
    unit_shifts = np.concatenate([g.unit_shifts for g in graphs], axis=0)
    edge_graph = np.repeat(np.arange(len(graphs)), [g.edge_index.shape[1] for g in graphs])
    cells = np.stack([g.cell for g in graphs])  # (B, 3, 3)
    shifts = (
        np.einsum("ek,ekl->el", unit_shifts.astype(np.float64), cells[edge_graph])
        if len(edge_graph)
        else np.zeros((0, 3))
    )
    positions = np.concatenate([_centred(g) for g in graphs])
    has_e = all(g.energy is not None for g in graphs)
    has_f = all(g.forces is not None for g in graphs)

    def t(x: np.ndarray, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.as_tensor(x, dtype=dt, device=device)

    return AtomicGraph(
        positions=t(positions),
        numbers=t(np.concatenate([g.numbers for g in graphs]), torch.long),
        batch=t(np.repeat(np.arange(len(graphs)), counts), torch.long),
        ptr=t(offsets, torch.long),
        edge_index=t(edge_index.reshape(2, -1), torch.long),
        shifts=t(shifts.reshape(-1, 3)),
        unit_shifts=t(unit_shifts.reshape(-1, 3)),
        cell=t(cells.reshape(-1, 3)),
        n_graphs=len(graphs),
        energy=t(np.array([g.energy for g in graphs]), torch.float64) if has_e else None,
        forces=t(np.concatenate([g.forces for g in graphs])) if has_f else None,
    )


def fit_e0s(graphs: Sequence[GraphData], elements: Sequence[int]) -> dict[int, float]:
    """Per-element reference energies by least squares of energy on composition (minimum-norm solution)."""
    index = {z: k for k, z in enumerate(elements)}
    a = np.zeros((len(graphs), len(elements)))
    for r, g in enumerate(graphs):
        for z in g.numbers:
            a[r, index[int(z)]] += 1
    b = np.array([g.energy for g in graphs], dtype=np.float64)
    x, *_ = np.linalg.lstsq(a, b, rcond=None)
    return {int(z): float(x[k]) for z, k in index.items()}
