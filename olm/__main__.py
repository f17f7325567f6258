"""The ``olm`` command (``pip install .``) and ``python -m olm``: olm's Lightning CLI (`olm.cli`).

    olm fit --config configs/tiny.yaml        # the same as: python cli.py fit --config configs/tiny.yaml
"""

import sys

from olm.cli import main


def console() -> int:
    """Run the CLI on ``sys.argv``; 0 when the subcommand returns (errors exit through SystemExit)."""
    main()
    return 0


if __name__ == "__main__":
    sys.exit(console())
