"""The store's identity and its content-addressed blobs (model checkpoints kept where every machine can read them).

A blob is stored once per sha256 and checked against it on the way in and on the way out, so a checkpoint read
back on another machine is byte for byte the one that was trained.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from sapis.errors import ConfigError, InputError
from sapis.storage import configs
from sapis.storage.orm import Blob, StoreInfo, utcnow


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def store_uuid(session: Session) -> str:
    """This store's uuid (32 hex digits), written once by migration 0003."""
    value = session.execute(select(StoreInfo.value).where(StoreInfo.key == "uuid")).scalar_one_or_none()
    if not value:
        raise ConfigError("the store has no uuid (table store_info is empty): run `sapis db upgrade`")
    return value


def put_blob(session: Session, data: bytes, sha256: str | None = None) -> str:
    """Store ``data`` (idempotent: an existing blob with the same hash is kept); returns its sha256.

    With ``sha256`` given, the bytes must hash to it (InputError otherwise, nothing written).
    """
    digest = sha256_bytes(data)
    if sha256 is not None and sha256 != digest:
        raise InputError("blob", f"bytes hash to sha256 {digest[:12]}…, not the expected {sha256[:12]}…")
    session.execute(
        configs.upsert(session, Blob), [{"sha256": digest, "size": len(data), "data": data, "created_at": utcnow()}]
    )
    return digest


def get_blob(session: Session, sha256: str) -> bytes | None:
    """The bytes stored under ``sha256`` (verified against it), or None when the store does not hold them."""
    data = session.execute(select(Blob.data).where(Blob.sha256 == sha256)).scalar_one_or_none()
    if data is None:
        return None
    data = bytes(data)
    if sha256_bytes(data) != sha256:
        raise InputError("store", f"blob {sha256[:12]}… is corrupt: its bytes no longer match their sha256")
    return data


def has_blob(session: Session, sha256: str) -> bool:
    """Whether the store holds a blob with this hash."""
    return session.execute(select(Blob.sha256).where(Blob.sha256 == sha256)).first() is not None
