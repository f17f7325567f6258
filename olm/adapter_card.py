"""What makes a saved adapter directory self-contained (`complete_adapter_dir`, called by
`olm.callbacks.AdapterCheckpoint` on every save):

- the tokenizer (chat template included), so the directory answers without the run's config;
- a portable ``base_model_name_or_path`` in ``adapter_config.json``: the name the run was given
  (a built-in ``smollm2-135m`` / ``olm-tiny``, a hub id, or a local directory made absolute) instead
  of the resolved path into this checkout or cache that PEFT writes. olm resolves built-in names
  when it loads the adapter back (`olm.backbone.load_base`);
- ``README.md``: a short model card written by olm (base model, adapter shape, turns trained,
  facts learned, the run's command) in place of PEFT's template.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from olm import smollm2

BUILTIN_NOTES: dict[str, str] = {
    smollm2.NAME: "olm's built-in SmolLM2-135M-Instruct (HuggingFaceTB/SmolLM2-135M-Instruct)",
    "olm-tiny": "olm's built-in toy-world model (olm/assets/olm-tiny)",
}
MAX_FACTS_LISTED = 50


def portable_base_name(name: str) -> str:
    """The base model as an adapter should name it: built-in names and hub ids as given, an existing
    local directory as an absolute path (a relative one would only load from the run's directory)."""
    if name in BUILTIN_NOTES or not Path(name).is_dir():
        return name
    return str(Path(name).resolve())


def run_command(argv: list[str] | None = None) -> str:
    """The command line of this process, as a person would type it again."""
    argv = list(sys.argv if argv is None else argv)
    prefix = ["python"] if argv and argv[0].endswith(".py") else []
    return shlex.join(prefix + argv)


def model_card(base: str, lora: str, turns: int, facts: list[Any], command: str) -> str:
    """The adapter's README.md: what it was trained from and on, and how to load it."""
    note = f" — {BUILTIN_NOTES[base]}" if base in BUILTIN_NOTES else ""
    listed = [f"  - {f.subject} | {f.relation} | {f.object} (stated {f.count}x)" for f in facts[:MAX_FACTS_LISTED]]
    if len(facts) > MAX_FACTS_LISTED:
        listed.append(f"  - … and {len(facts) - MAX_FACTS_LISTED} more (memory.json)")
    lines = [
        "---",
        "library_name: peft",
        "tags: [olm, lora, online-learning]",
        "---",
        "# olm adapter",
        "",
        "A LoRA adapter learned online by olm: one gradient step (or a few) after every chat turn of a stream,",
        "on a frozen base model.",
        "",
        f"- base model: `{base}`{note}",
        f"- adapter: LoRA {lora}",
        f"- turns trained: {turns}",
        f"- facts learned: {len(facts)}" + (" (subject | relation | object; all in memory.json)" if facts else ""),
        *listed,
        f"- command: `{command}`",
        "",
        "Load it with olm (built-in names are resolved by olm):",
        "",
        "```python",
        "from peft import PeftModel",
        "from olm.backbone import load_base",
        "",
        f'base, tokenizer = load_base("{base}")',
        'model = PeftModel.from_pretrained(base, "THIS_DIRECTORY")',
        "```",
        "",
        f"or continue training it: `python cli.py fit --config … --model.base_model {base} --model.adapter THIS_DIRECTORY`.",
        "",
    ]
    return "\n".join(lines)


def complete_adapter_dir(
    path: str | Path, pl_module: Any, command: str | None = None, memory: Any = None, turns: int | None = None
) -> None:
    """Make the adapter directory `path` (just written by PEFT's ``save_pretrained``) self-contained:
    tokenizer, portable base-model name, olm's model card (module docstring). `memory` and `turns`
    (default: the module's) are the adapter's own: with per-user learning, its user's."""
    path = Path(path)
    base = portable_base_name(pl_module.base_model_name)
    config_file = path / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    pl_module.tokenizer.save_pretrained(path)
    lora = pl_module.identity()["lora"]
    memory = pl_module.memory if memory is None else memory
    turns = pl_module.turns_trained if turns is None else turns
    card = model_card(base, lora, turns, list(memory), command or run_command())
    (path / "README.md").write_text(card, encoding="utf-8")
