"""Checks of output paths that every command runs before its work starts (so a bad --out costs nothing)."""

from __future__ import annotations

from pathlib import Path


def check_output(out: Path, inputs: tuple[Path, ...] = ()) -> None:
    """InputError unless ``out`` can be written as a file: not an input, not a directory, every existing parent
    a directory, and the folder writable. Checked before any compute, so a bad path costs nothing."""
    from sapis.errors import InputError

    for path in inputs:
        if out.resolve() == path.resolve():
            raise InputError(str(out), "--out must differ from the input file")
    if out.is_dir():
        raise InputError(str(out), "--out is a directory; give a file name")
    for parent in out.resolve().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(str(out), f"cannot create the output: {parent} is a file, not a directory")
            break
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.with_name(f".{out.name}.probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(str(out), f"cannot write the output: {exc.strerror or exc}") from None
