"""Rendering an exchange: which tokens are task-loss targets (reply, user message, never context:
system prompt, history, tool calls and results) and the count of tokens cut to max_tokens."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from olm.render import render_exchange

CALL = '[tool call] {"name": "cancel", "arguments": {"id": "X1"}}'
RESULT = '[tool result] {"status": "cancelled"}'
SPEECH = "Booking X1 is cancelled."
REPLY = f"{CALL}\n{RESULT}\n{SPEECH}"
SPANS = ((0, len(CALL)), (len(CALL) + 1, len(CALL) + 1 + len(RESULT)))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def targets(example) -> str:
    """The characters of the rendered text covered by target tokens."""
    return "".join(example.text[s:e] for (s, e), m in zip(example.offsets, example.loss_mask.tolist()) if m)


@pytest.mark.parametrize("loss_on", ["reply", "exchange"])
def test_tool_steps_and_system_prompt_are_never_targets(tokenizer, loss_on):
    ex = render_exchange(tokenizer, "Cancel X1.", REPLY, (("hi", "hello"),), loss_on, system="Be an agent.",
                         context_spans=SPANS)
    assert CALL in ex.text and RESULT in ex.text and "Be an agent." in ex.text  # in view ...
    trained = targets(ex)
    assert SPEECH in trained and "cancel" not in trained.replace(SPEECH, "")  # ... but never trained
    assert "Be an agent" not in trained and "hello" not in trained
    assert ("Cancel X1." in trained) == (loss_on == "exchange")
    plain = targets(render_exchange(tokenizer, "Cancel X1.", REPLY, loss_on="reply"))
    assert CALL in plain  # without the spans the tool JSON would be trained as speech


def test_cut_to_max_tokens_is_reported(tokenizer):
    full = render_exchange(tokenizer, "Zara is my sister.", "Got it. " * 20)
    cut = render_exchange(tokenizer, "Zara is my sister.", "Got it. " * 20, max_tokens=16)
    assert full.cut_tokens == 0 and cut.num_tokens == 16 and cut.cut_tokens == full.num_tokens - 16
    assert cut.input_ids.tolist() == full.input_ids.tolist()[-16:]


@pytest.mark.parametrize("loss_on", ["reply", "exchange"])
def test_end_of_turn_markup_is_a_target_only_when_asked(tokenizer, loss_on):
    kept = render_exchange(tokenizer, "Who is Zara?", "Zara is your sister.", loss_on=loss_on)
    dropped = render_exchange(tokenizer, "Who is Zara?", "Zara is your sister.", loss_on=loss_on, end_target=False)
    assert kept.input_ids.tolist() == dropped.input_ids.tolist()
    assert targets(kept).startswith(targets(dropped)) and targets(dropped).endswith("Zara is your sister.")
    tail = targets(kept)[len(targets(dropped)):]
    assert tail.strip() and tail.strip() in kept.text[kept.text.rindex("sister.") + len("sister."):]
