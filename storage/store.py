"""The :class:`Store` facade: the ledger of the pipeline (SQLite or PostgreSQL), one transaction per call."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from sapis.storage import blobs, configs, db, export, labels, pools
from sapis.storage import campaigns as camp
from sapis.storage.campaigns import CampaignInfo, RoundInfo
from sapis.storage.labels import Claim
from sapis.storage.pools import PoolInfo, SubmitReport


class Store:
    """Typed access to the store. Every method runs in its own transaction and commits on success.

    >>> import tempfile, os
    >>> store = Store(f"sqlite:///{tempfile.mkdtemp()}/doc.db")
    >>> store.pools()
    []
    """

    def __init__(self, url: str | None = None, *, upgrade: bool = True, create: bool = True) -> None:
        """Open the store at ``url`` (default: the settings' URL), migrating its schema unless ``upgrade`` is False.

        ``create=False``: the store must exist (a SQLite file that is not a sapis store is a StoreError and
        nothing is created); for everything that reads or works on a store rather than filling a new one.
        """
        if url is None:
            from sapis.settings import get_settings

            url = get_settings().url
        self.url: str = url
        self.engine: Engine = db.make_engine(url, create=create)
        self._factory = db.session_factory(self.engine)
        self._read_factory = db.session_factory(self.engine, read_only=True)
        self._uuid: str | None = None
        if upgrade:
            db.ensure_schema(self.engine)

    @property
    def uuid(self) -> str:
        """This store's uuid (32 hex digits): keys local artifacts so two stores sharing SAPIS_HOME never collide."""
        if self._uuid is None:
            with self.session() as s:
                self._uuid = blobs.store_uuid(s)
        return self._uuid

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: commits on exit, rolls back on error."""
        with db.session_scope(self._factory) as s:
            yield s

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """One read-only transaction (a consistent snapshot; on SQLite it takes no write lock)."""
        with db.session_scope(self._read_factory) as s:
            yield s

    def dispose(self) -> None:
        """Close all pooled connections."""
        self.engine.dispose()

    @staticmethod
    def _lease(lease_seconds: float | None) -> float:
        if lease_seconds is not None:
            return labels.check_lease(lease_seconds)
        from sapis.settings import get_settings

        return get_settings().lease_seconds

    # pools
    def submit_pool(
        self,
        sources: Sequence[str | Path | Atoms],
        name: str,
        charge: int = 0,
        multiplicity: int | None = None,
        label_fingerprint: str | None = None,
        label_spec: dict[str, Any] | None = None,
        allow_fragments: bool = False,
        frames: Sequence[pools._Frame] | None = None,
    ) -> SubmitReport:
        """Submit structures as pool ``name``, all-or-nothing (:func:`sapis.storage.pools.submit_pool`)."""
        from sqlalchemy.exc import IntegrityError

        try:
            with self.session() as s:
                report = pools.submit_pool(
                    s, sources, name, charge, multiplicity, label_fingerprint, label_spec, allow_fragments, frames
                )
                db.refresh_statistics(s, report.n_new + report.n_labels, ("configurations", "labels"))
                return report
        except IntegrityError:
            # a concurrent submission created the same pool or rows first; the retry sees them and either
            # finds the same set (adds nothing) or rejects a different set with a clear message
            with self.session() as s:
                return pools.submit_pool(
                    s, sources, name, charge, multiplicity, label_fingerprint, label_spec, allow_fragments, frames
                )

    def pools(self) -> list[PoolInfo]:
        """All pools with counts."""
        with self.session() as s:
            return pools.pools(s)

    def pool_atoms(self, pool: str | int) -> list[Atoms]:
        """The submitted structures of a pool, in submission order."""
        with self.read_session() as s:
            return pools.pool_atoms(s, pool)

    # configurations
    def add_configurations(
        self, atoms: Sequence[Atoms], provenance: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> list[int]:
        """Store configurations (de-duplicated); ids in input order."""
        with self.session() as s:
            return configs.add_configurations(s, atoms, provenance)

    def get_atoms(self, config_ids: Sequence[int]) -> list[Atoms]:
        """Configurations as Atoms, in the order asked."""
        with self.read_session() as s:
            return configs.get_atoms(s, config_ids)

    # labels
    def enqueue_labels(
        self, config_ids: Sequence[int], fingerprint: str, spec: Mapping[str, Any], retry_failed: bool = False
    ) -> int:
        """Queue pending labels; returns how many were new."""
        with self.session() as s:
            n_new = labels.enqueue_labels(s, config_ids, fingerprint, spec, retry_failed)
            db.refresh_statistics(s, n_new)
            return n_new

    def claim_labels(
        self, worker: str, n: int = 1, lease_seconds: float | None = None, fingerprint: str | None = None
    ) -> list[Claim]:
        """Atomically claim up to ``n`` pending or lease-expired labels."""
        with self.session() as s:
            return labels.claim_labels(s, worker, n, self._lease(lease_seconds), fingerprint)

    def release_labels(self, label_ids: Sequence[int], worker: str) -> int:
        """Hand ``worker``'s running claims back as pending (an interrupted worker); returns how many."""
        with self.session() as s:
            return labels.release_labels(s, label_ids, worker)

    def heartbeat(self, label_id: int, worker: str, lease_seconds: float | None = None) -> bool:
        """Extend a held lease; False if the claim was lost."""
        with self.session() as s:
            return labels.heartbeat(s, label_id, worker, self._lease(lease_seconds))

    def complete_label(
        self,
        label_id: int,
        worker: str,
        energy: float,
        forces: np.ndarray,
        cost: Mapping[str, Any],
        artifact: str | None = None,
    ) -> bool:
        """Store a result; False (nothing written) if the claim was lost or a done label exists."""
        with self.session() as s:
            return labels.complete_label(s, label_id, worker, energy, forces, cost, artifact)

    def fail_label(self, label_id: int, worker: str, reason: str, cost: Mapping[str, Any] | None = None) -> bool:
        """Mark a held claim failed; False if the claim was lost."""
        with self.session() as s:
            return labels.fail_label(s, label_id, worker, reason, cost)

    def pending_labels(self, fingerprint: str, config_ids: Sequence[int] | None = None) -> list[tuple[int, int]]:
        """(label id, config id) of labels waiting for a worker at ``fingerprint``."""
        with self.session() as s:
            return labels.pending_labels(s, fingerprint, config_ids)

    def cancel_pending(self, label_ids: Sequence[int], reason: str) -> list[int]:
        """Cancel still-pending labels (never running, done or failed ones), recording why; returns those cancelled."""
        with self.session() as s:
            return labels.cancel_pending(s, label_ids, reason)

    def label_counts(self, fingerprint: str | None = None, config_ids: Sequence[int] | None = None) -> dict[str, int]:
        """Label rows per status."""
        with self.session() as s:
            return labels.label_counts(s, fingerprint, config_ids)

    def check_level(self, fingerprint: str) -> None:
        """NotFoundError, listing the known levels, unless ``fingerprint`` names a level in the store."""
        with self.read_session() as s:
            labels.check_level(s, fingerprint)

    def labelled(
        self,
        fingerprint: str | None,
        config_ids: Sequence[int] | None = None,
        pool: str | int | None = None,
        campaign_id: int | None = None,
        molecule_id: int | None = None,
    ) -> list[Atoms]:
        """Done labels as Atoms with a SinglePointCalculator."""
        with self.read_session() as s:
            return export.labelled(s, fingerprint, config_ids, pool, campaign_id, molecule_id)

    def label_levels(self, pool: str | int | None = None, campaign_id: int | None = None) -> list[str]:
        """The level fingerprints of the done labels in a selection (a pool, a campaign, or all), sorted."""
        with self.read_session() as s:
            return export.levels(s, pool, campaign_id)

    def export_extxyz(
        self,
        path: str | Path,
        pool: str | int | None = None,
        campaign_id: int | None = None,
        fingerprint: str | None = None,
    ) -> int:
        """Write done labels as extxyz with REF_energy/REF_forces and the fingerprint; returns frame count.

        ConfigError (nothing written) when the selection mixes levels of theory and no ``fingerprint`` is given.
        """
        with self.read_session() as s:
            return export.export_extxyz(s, path, pool, campaign_id, fingerprint)

    # campaigns
    def create_campaign(self, name: str, config: Mapping[str, Any]) -> int:
        """Create a campaign; returns its id."""
        with self.session() as s:
            return camp.create_campaign(s, name, config)

    def check_new_campaign_name(self, name: str, what: str = "campaign name") -> str:
        """``name`` stripped if a new campaign may take it; ConfigError or InputError (naming ``what``) if not."""
        with self.session() as s:
            return camp.check_new_name(s, name, what)

    def campaign(self, id_or_name: int | str) -> CampaignInfo:
        """A campaign by id or name."""
        with self.session() as s:
            return camp.campaign(s, id_or_name)

    def campaigns(self) -> list[CampaignInfo]:
        """All campaigns, oldest first."""
        with self.session() as s:
            return camp.campaigns(s)

    def set_campaign_status(self, campaign_id: int, status: str) -> None:
        """Set a campaign's status."""
        with self.session() as s:
            camp.set_campaign_status(s, campaign_id, status)

    def attach_pool(self, campaign_id: int, pool: str | int) -> None:
        """Attach a pool to a campaign (idempotent)."""
        with self.session() as s:
            camp.attach_pool(s, campaign_id, pool)

    def campaign_pools(self, campaign_id: int) -> list[PoolInfo]:
        """Pools attached to a campaign."""
        with self.session() as s:
            return camp.campaign_pools(s, campaign_id)

    def start_round(self, campaign_id: int, index: int) -> int:
        """Round id for (campaign, index), created if new."""
        with self.session() as s:
            return camp.start_round(s, campaign_id, index)

    def update_round(
        self,
        round_id: int,
        *,
        status: str | None = None,
        step: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        decision: str | None = None,
        evidence: Mapping[str, Any] | None = None,
    ) -> None:
        """Update a round (metrics merge)."""
        with self.session() as s:
            camp.update_round(
                s, round_id, status=status, step=step, metrics=metrics, decision=decision, evidence=evidence
            )

    def rounds(self, campaign_id: int) -> list[RoundInfo]:
        """The campaign's rounds in order."""
        with self.session() as s:
            return camp.rounds(s, campaign_id)

    def add_selections(self, round_id: int, rows: Sequence[Mapping[str, Any]]) -> int:
        """Record selections of a round; returns how many were new."""
        with self.session() as s:
            return camp.add_selections(s, round_id, rows)

    def selections(
        self, campaign_id: int, role: str | None = None, round_index: int | None = None
    ) -> list[dict[str, Any]]:
        """Selections of a campaign."""
        with self.session() as s:
            return camp.selections(s, campaign_id, role, round_index)

    def add_checkpoint(
        self,
        campaign_id: int,
        round_index: int,
        member: int,
        architecture: str,
        config: Mapping[str, Any],
        n_params: int,
        train_flops: float,
        wall_s: float,
        metrics: Mapping[str, Any],
        path: str,
        sha256: str,
    ) -> int:
        """Record a trained ensemble member; returns its id."""
        with self.session() as s:
            return camp.add_checkpoint(
                s,
                campaign_id,
                round_index,
                member,
                architecture,
                config,
                n_params,
                train_flops,
                wall_s,
                metrics,
                path,
                sha256,
            )

    def checkpoints(self, campaign_id: int, round_index: int | None = None) -> list[dict[str, Any]]:
        """Checkpoints of a campaign."""
        with self.session() as s:
            return camp.checkpoints(s, campaign_id, round_index)

    # blobs (checkpoints kept in the store)
    def put_blob(self, data: bytes, sha256: str | None = None) -> str:
        """Keep ``data`` in the store under its sha256 (idempotent); returns the hash."""
        with self.session() as s:
            return blobs.put_blob(s, data, sha256)

    def blob(self, sha256: str) -> bytes | None:
        """The bytes kept under ``sha256``, verified, or None when the store does not hold them."""
        with self.session() as s:
            return blobs.get_blob(s, sha256)

    def has_blob(self, sha256: str) -> bool:
        """Whether the store holds bytes with this hash."""
        with self.session() as s:
            return blobs.has_blob(s, sha256)
