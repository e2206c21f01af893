"""`edge-run` command line (placeholder until the sim world and the runtime pipeline lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("edge-run: not yet available in this build (the sim world and the runtime pipeline is not implemented yet).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
