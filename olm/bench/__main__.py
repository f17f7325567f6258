"""Dispatch ``python -m olm.bench SUBCOMMAND [FLAGS]`` to the subcommand's module.

    python -m olm.bench speed --out DIR        # see olm/bench/speed.py; --help lists every flag

Each subcommand module exposes ``main(argv: list[str]) -> int``; a new benchmark adds one line to
`COMMANDS`.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, str] = {"capacity": "olm.bench.capacity", "facts": "olm.bench.facts", "speed": "olm.bench.speed"}
"""Subcommand name → module implementing it."""


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand named by the first argument with the remaining arguments.

    Returns:
        The subcommand's exit status; 2 for a missing or unknown subcommand.
    """
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m olm.bench {{{','.join(COMMANDS)}}} [--help]", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
