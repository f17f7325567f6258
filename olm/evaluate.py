"""Evaluate a saved adapter directory: recall of facts from the weights, and locality, against the base.

    python -m olm.evaluate --adapter runs/tiny/version_0/adapter                 # the facts it remembers
    python -m olm.evaluate --adapter DIR --probes probes.jsonl --out eval.json    # your own questions

The protocol of docs/design.md §6, with the code the run and the benchmark use:

- **recall**: every probe question is asked alone, in a fresh context (no chat history), to the
  adapted model and to the base (adapter disabled); an answer recalls the fact when it contains the
  expected answer (`olm.probes.recall_answers`, `olm.probes.is_recalled`). A probe file is JSONL,
  one ``{"question": ..., "answer": ...}`` (or ``"answers": [...]``, any of which counts) per line;
  without ``--probes`` the adapter's own ``memory.json`` gives the questions of the facts it learned.
- **locality**: on general prompts never trained on (default: the fact benchmark's
  ``olm/bench/data/general_prompts.txt``), teacher-forced top-1 agreement with the base along the
  base's own greedy reply (`olm.bench.facts.reference` / `top1`): 1.0 means the adapter changed no
  next-token choice there.
- ``--routing``: answer as a run with ``model.routing.enabled`` does (`olm.routing`): each probe and
  each general prompt goes to the adapter or to the base by the adapter's read share.

Prints the recall table (`olm.callbacks.recall_report`) and a JSON summary; ``--out`` writes the
summary and rows as JSON (and the table as markdown beside it).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from olm.bench.facts import GENERAL_PROMPTS, reference, top1
from olm.callbacks.recall_report import RecallRow, format_report, markdown_report
from olm.generation import GenerationSettings
from olm.module import OnlineLM
from olm.probes import is_recalled, load_anchors, recall_answers
from olm.publish import AdapterDirError, resolve_adapter_dir
from olm.routing import RoutingSettings


def load_probes(path: str | Path) -> list[dict[str, Any]]:
    """Probes of a JSONL file as ``{"question", "answers": [...], "statements"}``.

    Raises:
        ValueError: a line is not a JSON object with a question and an answer, naming the line.
    """
    probes = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: invalid JSON: {err.msg}") from None
        answers = item.get("answers", [item.get("answer")]) if isinstance(item, dict) else None
        if not (isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(answers, list)
                and answers and all(isinstance(a, str) and a.strip() for a in answers)):
            raise ValueError(f'{path}:{lineno}: expected {{"question": str, "answer": str}} or "answers": [str], got {line[:80]!r}')
        probes.append({"question": item["question"], "answers": answers, "statements": int(item.get("statements", 0))})
    if not probes:
        raise ValueError(f"{path}: no probe")
    return probes


def memory_probes(adapter: str | Path) -> list[dict[str, Any]]:
    """Probes from an adapter directory's ``memory.json`` (a version root: its latest version): each
    remembered fact's question and object."""
    path = resolve_adapter_dir(adapter) / "memory.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass --probes FILE")
    facts = json.loads(path.read_text(encoding="utf-8")).get("facts", [])
    probes = [{"question": f["question"], "answers": [f["object"]], "statements": int(f.get("count", 0))}
              for f in facts if f.get("question") and f.get("object")]  # fmt: skip
    if not probes:
        raise ValueError(f"{path} holds no fact with a question: pass --probes FILE")
    return probes


def adapter_base(adapter: str | Path) -> str:
    """The base model an adapter directory names (``adapter_config.json``'s base_model_name_or_path)."""
    config = json.loads((resolve_adapter_dir(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    return config["base_model_name_or_path"]


def recall(module: OnlineLM, probes: list[dict[str, Any]]) -> list[RecallRow]:
    """Each probe asked alone to the adapted model and to the base (adapter disabled)."""
    model, tok, gen = module.model, module.tokenizer, module.generation
    questions = [p["question"] for p in probes]
    adapted = recall_answers(model, tok, questions, gen, module.router)
    with model.disable_adapter():
        base = recall_answers(model, tok, questions, gen)
    return [
        RecallRow(p["question"], " / ".join(p["answers"]), b, a, any(is_recalled(b, x) for x in p["answers"]),
                  any(is_recalled(a, x) for x in p["answers"]), p["statements"])
        for p, b, a in zip(probes, base, adapted)
    ]  # fmt: skip


@torch.no_grad()
def locality(module: OnlineLM, prompts: list[str]) -> dict[str, float]:
    """Teacher-forced top-1 agreement with the base along the base's greedy replies to `prompts`."""
    ref = reference(module, prompts, [])
    agree = top1(module, ref.ids, ref.attention, ref.positions, module.router) == ref.base_top1
    return {"teacher_forced": float(agree.float().mean()), "positions": int(agree.numel())}


def evaluate(
    adapter: str | Path, probes: list[dict[str, Any]] | None = None, base_model: str | None = None,
    prompts: list[str] | None = None, max_new_tokens: int = 32, routing: bool = False,
) -> dict[str, Any]:
    """Recall and locality of the adapter in `adapter` (see the module docstring); a version root
    (``runs/tiny/version_0/adapter``) stands for its latest version (`olm.publish.resolve_adapter_dir`).

    Returns:
        ``{"adapter", "base_model", "probes", "recall_adapted", "recall_base", "locality": {...}, "rows": [...]}``.
    """
    adapter = resolve_adapter_dir(adapter)
    module = OnlineLM(
        base_model=base_model or adapter_base(adapter), adapter=str(adapter),
        generation=GenerationSettings(max_new_tokens=max_new_tokens, do_sample=False),
        routing=RoutingSettings(enabled=routing),
    ).eval()
    probes = probes if probes is not None else memory_probes(adapter)
    rows = recall(module, probes)
    n = len(rows)
    return {
        "adapter": str(adapter), "base_model": module.base_model_name, "probes": n, "routing": routing,
        "recall_adapted": sum(r.adapted_recalled for r in rows) / n, "recall_base": sum(r.base_recalled for r in rows) / n,
        "locality": locality(module, prompts if prompts is not None else load_anchors(GENERAL_PROMPTS)),
        "rows": [asdict(r) for r in rows],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Evaluate an adapter directory; prints the recall table and a JSON summary. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m olm.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", required=True, help="an adapter directory written by olm (its latest version) or a PEFT directory")
    parser.add_argument("--probes", help='JSONL of {"question", "answer"}; default: the adapter\'s memory.json facts')
    parser.add_argument("--base-model", help="default: the adapter's adapter_config.json base_model_name_or_path")
    parser.add_argument("--prompts", help=f"general prompts for locality, one a line (default {GENERAL_PROMPTS.name})")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="greedy answer length")
    parser.add_argument("--routing", action="store_true", help="route each prompt to the adapter or the base (olm.routing)")
    parser.add_argument("--out", help="write the summary and rows as JSON here (and a .md table beside it)")
    args = parser.parse_args(argv)
    try:
        resolve_adapter_dir(args.adapter)
    except AdapterDirError as err:
        parser.error(f"--adapter: {err}")
    try:
        probes = load_probes(args.probes) if args.probes else None
        prompts = load_anchors(args.prompts) if args.prompts else None
        result = evaluate(args.adapter, probes, args.base_model, prompts, args.max_new_tokens, args.routing)
    except (FileNotFoundError, ValueError) as err:
        print(f"olm.evaluate: {err}", file=sys.stderr)
        return 2
    rows = [RecallRow(**r) for r in result["rows"]]
    print(format_report(rows))
    summary = {k: v for k, v in result.items() if k != "rows"}
    print(json.dumps(summary, indent=2))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        out.with_suffix(".md").write_text(markdown_report(rows), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
