"""Type-check sapis as it is installed: mypy over a tree laid out like the installed package.

The repository maps top-level folders onto subpackages (``storage/`` is ``sapis.storage``; see
``[tool.setuptools.package-dir]`` in pyproject.toml). mypy does not read that mapping, and the editable install
resolves it with an import hook mypy cannot use, so run over the source folders every ``sapis.*`` import would
be unresolved. This script builds ``.mypy_cache/tree/sapis/`` from symlinks following the mapping (a fixed
place, so mypy's cache stays valid between runs), runs ``mypy -p sapis`` on it with the pydantic plugin
(configured in pyproject.toml), and prints the errors with repository paths. Exit status: mypy's.

    python tools/typecheck.py            # what `make lint` runs
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def package_dirs() -> dict[str, Path]:
    """``{"sapis": REPO/"sapis", "sapis.storage": REPO/"storage", ...}`` from pyproject.toml."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {pkg: REPO / folder for pkg, folder in meta["tool"]["setuptools"]["package-dir"].items()}


def build_tree(root: Path) -> Path:
    """Lay the packages out under ``root`` as they are installed; return the top package's directory."""
    dirs = package_dirs()
    top = root / "sapis"
    top.mkdir()
    for entry in dirs["sapis"].iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for pkg, folder in dirs.items():
        if pkg != "sapis":
            (root / Path(*pkg.split("."))).symlink_to(folder, target_is_directory=True)
    return top


def main(argv: list[str]) -> int:
    root = REPO / ".mypy_cache" / "tree"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    build_tree(root)
    env = dict(os.environ, MYPYPATH=str(root))
    cache = REPO / ".mypy_cache"
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), "--cache-dir", str(cache)]
    proc = subprocess.run([*cmd, "-p", "sapis", *argv], cwd=root, env=env, capture_output=True, text=True, check=False)
    out = proc.stdout
    for pkg, folder in package_dirs().items():
        if pkg != "sapis":
            out = out.replace(f"{pkg.replace('.', '/')}/", f"{folder.relative_to(REPO)}/")
    sys.stdout.write(out)
    sys.stderr.write(proc.stderr)
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
