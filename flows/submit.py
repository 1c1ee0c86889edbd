"""The ``submit-pool`` flow: put structures into the store as a named pool, from a file or from pasted text.

It is :meth:`sapis.storage.Store.submit_pool` as a Prefect flow, so a pool can be submitted from the Prefect
UI's run form (paste xyz/extxyz text into ``xyz_text``) or from a deployment on a work pool (``path`` is a
file on the machine that runs the flow). Invalid input raises the store's one-line
:class:`~sapis.errors.SapisError`, which fails the flow run with that message; the store writes a pool in
one transaction, so a failed run writes nothing.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from sapis.errors import ConfigError, InputError

#: Name of the file the pasted ``xyz_text`` is written to, and how errors in it are reported.
PASTED_SOURCE = "xyz_text"


def _report_dict(report: Any) -> dict[str, Any]:
    """The store's submit report (a dataclass or pydantic model) as a plain, JSON-able dict."""
    if dataclasses.is_dataclass(report) and not isinstance(report, type):
        return dataclasses.asdict(report)
    if hasattr(report, "model_dump"):
        return dict(report.model_dump(mode="json"))
    if isinstance(report, Mapping):
        return dict(report)
    return dict(vars(report))


def artifact_key(prefix: str, name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for ``prefix`` and a free-form ``name``.

    >>> artifact_key("submit-pool", "Water dimers_v2")
    'submit-pool-water-dimers-v2'
    """
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{prefix}-{slug}" if slug else prefix


def submit_markdown(report: Mapping[str, Any], name: str, source: str) -> str:
    """The markdown table published as the flow's artifact: pool, structures read, new and already stored."""
    rows = [
        ("pool", f"{name} (id {report.get('pool_id', '?')})"),
        ("source", source),
        ("read", report.get("n_read", "?")),
        ("new", report.get("n_new", "?")),
        ("existing", report.get("n_existing", "?")),
        ("labels enqueued", report.get("n_labels", 0)),
    ]
    if report.get("label_fingerprint"):
        rows.append(("label level", f"{report.get('label_method')}/{report.get('label_basis')} "
                     f"(fingerprint `{report['label_fingerprint']}`)"))  # fmt: skip
    lines = ["## Pool submission", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines) + "\n"


def _check_inputs(
    name: str, path: str | None, xyz_text: str | None, label_level: Mapping[str, Any] | None = None
) -> Any:
    """Reject parameter combinations before anything is read or written; returns the checked level (or None)."""
    level = None
    if label_level is not None:
        from sapis.tasks.dft import LevelOfTheory

        if not isinstance(label_level, Mapping):
            raise ConfigError(
                f"submit-pool: label_level must be a mapping like {{'method': 'PBE'}}, got {label_level!r}"
            )
        level = LevelOfTheory.from_spec(dict(label_level))
    if not name or not name.strip():
        raise ConfigError("submit-pool: the pool name must not be empty")
    if (path is None) == (xyz_text is None):
        raise ConfigError("submit-pool: give exactly one of `path` (a file) or `xyz_text` (pasted xyz text)")
    if xyz_text is not None and not xyz_text.strip():
        raise InputError(PASTED_SOURCE, "the pasted text is empty")
    if path is not None and not Path(path).expanduser().is_file():
        problem = "is a directory, not a file" if Path(path).expanduser().is_dir() else "no such file"
        raise InputError(path, f"{problem} (on the machine running the flow)")
    return level


def submit_pool_fn(
    name: str,
    path: str | None = None,
    xyz_text: str | None = None,
    charge: int = 0,
    multiplicity: int | None = None,
    database_url: str | None = None,
    label_level: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Submit a file or pasted xyz/extxyz text to the store as pool ``name``; returns the submit report.

    Pasted text is written to a temporary ``.xyz`` file (ASE reads plain xyz and extxyz from it) so it goes
    through the same reader and checks as a file; errors in it are reported against ``xyz_text``. With
    ``label_level`` (a level of theory, e.g. ``{"method": "PBE", "basis": "def2-svp"}``) every structure of the
    pool is also queued for labelling at that level, for ``label-worker`` runs to compute.
    """
    from sapis.storage import Store

    level = _check_inputs(name, path, xyz_text, label_level)
    store = Store(url=database_url)
    report = _submit(store, name, path, xyz_text, charge, multiplicity, level)
    if label_level is not None:
        from sapis.tasks.label_step import enqueue_pool

        queued = enqueue_pool(store, name, dict(label_level))
        report.update(
            n_labels=queued.n_new,
            label_fingerprint=queued.fingerprint,
            label_method=queued.level["method"],
            label_basis=queued.level["basis"],
        )
    return report


def _submit(
    store: Any,
    name: str,
    path: str | None,
    xyz_text: str | None,
    charge: int,
    multiplicity: int | None,
    level: Any = None,
) -> dict[str, Any]:
    """Write the pool; with ``level``, first check that its basis covers every element (else write nothing)."""
    if path is not None:
        file = Path(path).expanduser()
        _check_basis(file, level)
        report = store.submit_pool([file], name=name, charge=charge, multiplicity=multiplicity)
        return _report_dict(report)
    assert xyz_text is not None
    with tempfile.TemporaryDirectory(prefix="sapis-submit-") as tmp:
        file = Path(tmp) / f"{PASTED_SOURCE}.xyz"
        file.write_text(xyz_text if xyz_text.endswith("\n") else xyz_text + "\n")
        try:
            _check_basis(file, level)
            report = store.submit_pool([file], name=name, charge=charge, multiplicity=multiplicity)
        except InputError as exc:
            if str(file) not in exc.source and file.name not in exc.source:
                raise
            raise InputError(PASTED_SOURCE, exc.problem, exc.frame) from None
    return _report_dict(report)


def _check_basis(file: Path, level: Any) -> None:
    if level is None:
        return
    from sapis.storage.structures import read_structures

    level.check_elements({s for a in read_structures(file) for s in a.get_chemical_symbols()})


@flow(name="submit-pool", log_prints=False)
def submit_pool(
    name: str,
    path: str | None = None,
    xyz_text: str | None = None,
    charge: int = 0,
    multiplicity: int | None = None,
    database_url: str | None = None,
    label_level: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Submit structures to the store as pool ``name`` and publish a markdown summary.

    Args:
        name: Pool name (a second submission with the same name adds to it; duplicates are stored once).
        path: A structure file (any ASE-readable format) on the machine running the flow; give an absolute
            path, since a work-pool worker runs flows in a temporary directory.
        xyz_text: Inline xyz/extxyz text, e.g. pasted into the Prefect UI's run form (instead of ``path``).
        charge: Total charge of every structure that does not carry its own ``charge`` in its info.
        multiplicity: Spin multiplicity 2S+1 (default: lowest compatible with the electron count).
        database_url: SQLAlchemy URL of the store (default: ``SAPIS_DATABASE_URL`` of the machine running it).
        label_level: Also queue every structure of the pool for labelling at this level of theory
            (``sapis.tasks.dft.LevelOfTheory`` fields, e.g. ``{"method": "PBE", "basis": "def2-svp"}``);
            ``label-worker`` runs then compute them. Default: queue nothing.
    """
    report = submit_pool_fn(name, path, xyz_text, charge, multiplicity, database_url, label_level)
    source = path if path is not None else f"{PASTED_SOURCE} (pasted)"
    create_markdown_artifact(
        markdown=submit_markdown(report, name, source),
        key=artifact_key("submit-pool", name),
        description=f"Submission of pool {name!r}",
    )
    return report
