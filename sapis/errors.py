"""User-facing errors.

Anything the user can fix (a bad file, an impossible charge, an unknown basis) raises a :class:`SapisError`.
The CLI prints its message on one line and exits non-zero, without a traceback; everything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class SapisError(Exception):
    """An error caused by user input or configuration; its message is shown as is."""

    exit_code = 2


class InputError(SapisError):
    """Invalid input structure or file.

    >>> str(InputError("bad.xyz", "atoms 0 and 3 are 0.12 Å apart (minimum 0.5 Å)", frame=2))
    'bad.xyz, frame 2: atoms 0 and 3 are 0.12 Å apart (minimum 0.5 Å)'
    """

    def __init__(self, source: str, problem: str, frame: int | None = None) -> None:
        self.source, self.problem, self.frame = source, problem, frame
        where = source if frame is None else f"{source}, frame {frame}"
        super().__init__(f"{where}: {problem}")


class ConfigError(SapisError):
    """Invalid settings, campaign configuration or level of theory."""


class NotFoundError(SapisError):
    """A named object (pool, campaign, model directory) does not exist."""


def config_error(source: str, exc: ValidationError, drop: tuple[str, ...] = ()) -> ConfigError:
    """One-line :class:`ConfigError` from a pydantic ``ValidationError``: ``source: field.path: problem; ...``.

    ``drop`` names location parts left out of the field path (e.g. a discriminated union's tag). Pydantic's
    "Value error, " in front of a validator's own message is left out.
    """
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'] if str(p) not in drop) or 'config'}: "
        f"{str(err['msg']).removeprefix('Value error, ')}"
        for err in exc.errors()
    )
    return ConfigError(f"{source}: {problems}")


class StoreError(SapisError):
    """The store cannot be reached, read or written (URL, server, file, lock or schema revision)."""
