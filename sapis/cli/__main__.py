"""`python -m sapis.cli ...` is `sapis ...` (used to start worker processes with this interpreter)."""

from sapis.cli import main

main()
