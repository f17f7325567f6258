"""Shared fixtures: a tiny Qwen2 model + tokenizer built in code and saved to a local directory."""

from __future__ import annotations

import signal
import sys

import pytest

from olm.backbone import build_tiny_qwen2

TINY_TEXT = [
    "Zara is my sister.",
    "Got it. Zara is your sister.",
    "Who is Zara?",
    "Hello there, how are you today?",
    "Oslo is a city. Nurses work in hospitals.",
    "Xiomara lives in Lisbon.",
]


def build_tiny_model(path, seed: int = 0, hidden: int = 32, layers: int = 2) -> str:
    """Save a tiny random Qwen2 causal LM with a chat tokenizer to `path`; returns the path."""
    return build_tiny_qwen2(path, TINY_TEXT, hidden=hidden, layers=layers, seed=seed)


def pytest_configure(config):
    """Ctrl+C as in a terminal, however the suite was started: a shell without job control starts a
    background command (`pytest &`, `nohup`) with SIGINT ignored, the chat children the pty tests
    spawn inherit that, and the signal tests that check handlers are put back would see SIG_IGN."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def argv_without_pytest_flags(monkeypatch):
    """`cli.main(args)` as from a plain command line: LightningCLI warns when it is given args while
    sys.argv also holds some (pytest's own flags)."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])


@pytest.fixture(scope="session")
def few_locality_prompts(tmp_path_factory):
    """Every 6th prompt of the bundled locality file (~40, every kind of it): what the in-process tests
    fill the locality cache with on a tiny model, instead of all of its prompts each time."""
    import olm.locality
    from olm.probes import load_anchors

    path = tmp_path_factory.mktemp("locality") / "prompts.txt"
    path.write_text("\n".join(load_anchors(olm.locality.DEFAULT_PROMPTS)[::6]) + "\n")
    return path


@pytest.fixture(autouse=True)
def bundled_locality_prompts_are_few(monkeypatch, few_locality_prompts):
    """The default locality prompts of in-process runs are `few_locality_prompts` (tests of the bundled
    file itself import its path directly; subprocess runs read the real file)."""
    monkeypatch.setattr("olm.locality.DEFAULT_PROMPTS", few_locality_prompts)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))
