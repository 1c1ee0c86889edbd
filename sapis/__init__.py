"""sapis: Symmetry-Aware Physics-Informed Scaling.

Active learning of E(3)-equivariant interatomic potentials: coarse MD proposes configurations, an ensemble
ranks them by disagreement, PySCF labels the chosen ones, and a scaling controller decides whether the next
round grows data or model capacity. The subpackages follow the repository's folders:

- ``sapis.storage`` (``storage/``): the SQL ledger (SQLAlchemy + Alembic) and structure I/O; no torch.
- ``sapis.models`` (``models/``): the equivariant potential, ensembles, training, ASE calculator; no Prefect/SQL.
- ``sapis.tasks`` (``tasks/``): one unit of work each (label, explore, rank, train, evaluate, control).
- ``sapis.flows`` (``flows/``): Prefect flows that orchestrate the tasks.
"""

from __future__ import annotations

__version__ = "0.1.0"
