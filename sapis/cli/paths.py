"""Checks of output paths that every command runs before its work starts (so a bad --out costs nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def check_output(out: Path, inputs: tuple[Path, ...] = (), option: str = "--out") -> None:
    """InputError unless ``out`` can be written as a file: not an input, not a directory, every existing parent
    a directory, and the folder writable. Checked before any compute, so a bad path costs nothing. ``option``:
    the command's name for the path, as the message shows it."""
    from sapis.errors import InputError

    for path in inputs:
        if out.resolve() == path.resolve():
            raise InputError(str(out), f"{option} must differ from the input file")
    if out.is_dir():
        raise InputError(str(out), f"{option} is a directory; give a file name")
    _check_writable(out, out.parent, out.with_name(f".{out.name}.probe"), "output")


def check_output_dir(out: Path, create: bool = True) -> None:
    """InputError unless ``out`` is a directory that can be made (if absent) and written: checked before an export
    writes anything into it. ``create=False`` only checks that it is not a file nor under one, and makes nothing
    (for a command that creates it once its inputs have passed their checks)."""
    from sapis.errors import InputError

    if out.exists() and not out.is_dir():
        raise InputError(str(out), "--out is a file; give a directory")
    if create:
        _check_writable(out, out, out / ".sapis.probe", "output directory")
    else:
        _check_parents(out, "output directory")


def _check_parents(out: Path, what: str) -> None:
    """InputError unless the nearest existing parent of ``out`` is a directory."""
    from sapis.errors import InputError

    for parent in out.resolve().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(str(out), f"cannot create the {what}: {parent} is a file, not a directory")
            break


def _check_writable(out: Path, folder: Path, probe: Path, what: str) -> None:
    """InputError unless every existing parent of ``out`` is a directory and ``folder`` can be made and written
    (a ``probe`` file is created there and removed)."""
    from sapis.errors import InputError

    _check_parents(out, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(str(out), f"cannot write the {what}: {exc.strerror or exc}") from None


def check_not_store(out: Path, store: Any) -> None:
    """InputError if ``out`` is a file of the SQLite ``store`` (database, journal, WAL, shared memory): writing
    it would destroy the store."""
    from sapis.errors import InputError

    url = store.engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    db = Path(url.database).resolve()
    if out.resolve() in (db, *(db.with_name(db.name + s) for s in ("-journal", "-wal", "-shm"))):
        raise InputError(str(out), f"--out is a file of the store ({db}); give another name")
