"""The examples in docstrings run: every module of the installed package that shows one (``>>>``) passes
``doctest``, so an example cannot drift from the code it documents."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import sapis

ROOT = Path(sapis.__file__).resolve().parent.parent  # the repository: sapis/ and the folders mapped into it
FOLDERS = {name: f"sapis.{name}" for name in ("storage", "models", "tasks", "flows")} | {"sapis": "sapis"}


def _modules_with_examples() -> list[str]:
    out = []
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "migrations" in path.parts or ">>>" not in path.read_text(encoding="utf-8"):
                continue
            rel = path.relative_to(ROOT / folder).with_suffix("")
            out.append(".".join([package, *rel.parts]).removesuffix(".__init__"))
    return out


MODULES = _modules_with_examples()


def test_examples_are_found() -> None:
    assert len(MODULES) >= 10, MODULES  # the scan sees the package, not an empty folder


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name}: no example was run"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (see the output above)"
