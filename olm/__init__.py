"""olm: online learning of language models during chat (LoRA steps after every turn).

``olm.open(...)`` (`olm.api`) opens a model to teach and ask from Python; ``python cli.py fit`` or
``olm fit`` runs the Lightning CLI; design notes: docs/design.md.
"""

from typing import Any

__all__ = ["open", "OnlineSession"]


def __getattr__(name: str) -> Any:
    """`open` and `OnlineSession` from `olm.api`, imported on first use (``import olm.data`` stays light)."""
    if name in __all__:
        from olm import api

        return getattr(api, name)
    raise AttributeError(f"module 'olm' has no attribute {name!r}")
