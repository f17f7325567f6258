"""olm command line: ``python cli.py fit --config configs/tiny.yaml`` — the same as the installed
``olm fit --config configs/tiny.yaml`` (and ``python -m olm fit ...``).

The implementation is `olm.cli` (OlmCLI, main); this script only runs it from a checkout.
"""

from olm.cli import OlmCLI, main  # noqa: F401  (re-exported: tests and scripts use cli.main)

if __name__ == "__main__":
    main()
