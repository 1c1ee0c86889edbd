"""Where a campaign's models live: in the store (content-addressed blobs), cached on each machine's disk.

Training keeps every member checkpoint and the ensemble description in the store (:func:`keep_ensemble`); any
machine that reaches the store rebuilds a round's ensemble directory from there (:func:`materialise_ensemble`),
and every file is checked against the sha256 recorded when it was trained. Local copies live under
``<artifacts>/stores/<store uuid>/campaigns/<id>``, so two stores sharing one SAPIS_HOME never overwrite each
other's models.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sapis.errors import NotFoundError
from sapis.files import file_sha256

if TYPE_CHECKING:
    from sapis.storage.store import Store

log = logging.getLogger(__name__)
ENSEMBLE_SHA_KEY = "ensemble_sha256"  # checkpoint metrics key: sha256 of the round's ensemble.json blob


def campaign_dir(store: Store, campaign_id: int) -> Path:
    """This machine's directory for a campaign's artifacts, keyed by the store's uuid."""
    from sapis.settings import get_settings

    return get_settings().artifacts / "stores" / store.uuid / "campaigns" / f"{campaign_id:04d}"


def keep_file(store: Store, path: Path, sha256: str | None = None) -> str:
    """Copy a file into the store (checked against ``sha256`` when given); returns its sha256."""
    return store.put_blob(Path(path).read_bytes(), sha256)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def _fetch(store: Store, sha256: str, target: Path, fallback: Path | None, what: str) -> None:
    """Make ``target`` hold the bytes with ``sha256``: keep a matching file, else copy from the store or fallback."""
    if target.exists():
        if file_sha256(target) == sha256:
            return
        log.warning("%s: %s differs from the recorded sha256; replacing it with the store's copy", what, target)
    data = store.blob(sha256)
    if data is None and fallback is not None and fallback != target and fallback.is_file():
        data = fallback.read_bytes() if file_sha256(fallback) == sha256 else None
    if data is None:
        where = f"{fallback} is missing or differs" if fallback is not None else "no file was recorded"
        raise NotFoundError(
            f"{what}: checkpoint sha256 {sha256[:12]}… is not in the store and {where}; "
            "copy it from the machine that trained it (or retrain the round)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(target, data)


def materialise_ensemble(store: Store, campaign_id: int, round_index: int, out_dir: Path) -> Path | None:
    """Rebuild the round's ensemble directory (member_*.pt + ensemble.json) in ``out_dir`` from the store.

    Files already there with the recorded sha256 are kept; others come from the store's blobs (or, for rounds
    trained before checkpoints were kept in the store, from the recorded path if it still holds the same bytes).
    Returns ``out_dir``, or None when the round has no recorded checkpoints. NotFoundError (one line) when a
    checkpoint can be found nowhere.
    """
    rows = store.checkpoints(campaign_id, round_index)
    if not rows:
        return None
    arch = rows[-1]["architecture"]
    rows = [r for r in rows if r["architecture"] == arch]
    out_dir = Path(out_dir)
    for r in rows:
        what = f"campaign {campaign_id} round {round_index} member {r['member']}"
        _fetch(store, r["sha256"], out_dir / f"member_{r['member']}.pt", Path(r["path"]), what)
    desc = out_dir / "ensemble.json"
    ens_sha = (rows[0].get("metrics") or {}).get(ENSEMBLE_SHA_KEY)
    if ens_sha:
        old = Path(rows[0]["path"]).parent / "ensemble.json"
        _fetch(store, ens_sha, desc, old, f"campaign {campaign_id} round {round_index} ensemble.json")
    else:  # recorded before ensemble.json was kept: describe the members from their rows
        _write_atomic(desc, json.dumps(_description(arch, rows), indent=1).encode())
    return out_dir


def _description(arch: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "architecture": arch,
        "members": [
            {
                "index": r["member"],
                "path": f"member_{r['member']}.pt",
                "sha256": r["sha256"],
                "n_params": r["n_params"],
                "train_flops": r["train_flops"],
                "wall_s": r["wall_s"],
                "history": (r.get("metrics") or {}).get("history", []),
                "best": (r.get("metrics") or {}).get("best", {}),
            }
            for r in rows
        ],
    }
