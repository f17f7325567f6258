"""The model card of the built-in model, rendered from the build record of `olm.world.build`.

``python -m olm.world.card [DIR]`` re-renders ``DIR/MODEL_CARD.md`` from ``DIR/build.json``
(default DIR: olm-tiny's), e.g. after the card's wording changes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from olm.world.quality import DEFAULT_MODEL_DIR, TARGETS

RATE_MEANINGS = {
    "known": "pretraining facts asked in the corpus, every teaching-side question phrasing",
    "unknown": '"I don\'t know who X is." for held-out names (never in the corpus)',
    "acknowledgement": 'statements about held-out names acknowledged as "Got it. <answer>"',
    "paraphrase": "held-out question phrasings about pretraining people never asked that way in the corpus",
    "paraphrase_seen": "held-out question phrasings about pretraining people who were asked that way in the corpus",
    "from_statements": "teaching-side questions about pretraining people whose facts the corpus only states (never asks)",
}


def _quality_table(quality: dict) -> list[str]:
    rows = ["| rate | measured | target | probes | what |", "|---|---|---|---|---|"]
    for name, rate in quality["rates"].items():
        target = f"≥ {TARGETS[name]:.0%}" if name in TARGETS else "—"
        rows.append(f"| {name} | {rate:.1%} | {target} | {quality['counts'][name]} | {RATE_MEANINGS.get(name, '')} |")
    return rows


def _failures(quality: dict) -> list[str]:
    lines = []
    for name, fails in quality["failures"].items():
        lines += [f"- [{name}] {u!r} → expected {e!r}, got {g!r}" for u, e, g in fails]
    return lines or ["- none"]


def model_card(record: dict) -> str:
    """Markdown model card from a build record (see `olm.world.build.build`)."""
    cfg, train, corpus, world = record["config"], record["train"], record["corpus"], record["world"]
    m, t = cfg["model"], cfg["train"]
    early = " (stopped early by --minutes: not reproducible)" if train["stopped_early"] else ""
    lines = [
        "# olm-tiny",
        "",
        "The built-in base model of olm: a small `Qwen2ForCausalLM` pretrained from scratch on a",
        "synthetic toy world of chat (`olm/world/`), so that online learning can run on any CPU",
        "without a model hub. It knows its pretraining people, says \"I don't know who X is.\" about",
        "anyone else, and has never seen the held-out names that online learning teaches it.",
        "",
        "## How it was built",
        "",
        f"- command: `{record['command'].strip()}`",
        f"- seed: {cfg['seed']} (world, corpus sampling, initialisation and data order); {record['platform']}",
        f"- world: {world['people']} pretraining people with {world['facts']} facts; {world['held_out']} held-out names "
        f"(never in the corpus); {world['unknown']} unknown-pool names (only in \"I don't know\" questions); "
        f"{world['told']} told-pool names (only in statements and their acknowledgements, so that acknowledging "
        "is learned as copying)",
        f"- corpus: {corpus['conversations']} conversations, {corpus['exchanges']} exchanges, {corpus['tokens']} tokens "
        f"({cfg['corpus']['blocks']} balanced blocks; loss weight 1 on assistant replies, {t['prompt_loss_weight']} on user "
        f"messages); the facts of {round(cfg['world']['statement_share'] * world['people'])} of the pretraining people "
        "occur only as statements, never asked, so that answering from what one was told is learned (`from_statements`)",
        f"- tokenizer: byte-level BPE, {cfg['vocab_size']} tokens, Qwen-style chat template (`<|im_start|>`, `<|im_end|>`)",
        f"- model: {record['parameters']:,} parameters; hidden {m['hidden_size']}, {m['num_layers']} layers, "
        f"{m['num_heads']} heads ({m['num_kv_heads']} KV), MLP {m['intermediate_size']}, tied embeddings, float32",
        f"- training: {train['steps']} of {train['planned_steps']} steps{early}, batch {t['batch_size']} × {t['seq_len']} "
        f"tokens, AdamW lr {t['lr']} (warm-up {t['warmup_steps']}, cosine to {t['min_lr_ratio']}×), "
        f"{train['tokens']:,} tokens in {train['seconds'] / 60:.1f} min",
        f"- whole build (corpus, tokenizer, training, save, quality): {record['total_seconds'] / 60:.1f} min on a "
        f"2-core machine shared with other jobs (load average {record['load_average'][0]:.1f} at the start, "
        f"{record['load_average'][1]:.1f} at the end); artifacts {record['size_bytes'] / 1e6:.1f} MB",
        "",
        "## Base quality",
        "",
        "Generated replies (greedy, fresh context, reloaded from disk), exact match after normalising",
        "case, punctuation and spacing. `python -m olm.world.quality` reproduces these figures.",
        "",
        *_quality_table(record["quality"]),
        "",
        "Question phrasings: each fact kind has teaching-side phrasings (used by the teaching stream",
        "and the sample logs; the first is the recall probe) and held-out phrasings (generalization",
        "probes). The held-out phrasings do occur in the corpus, but only for about half of the",
        "people asked about (and in unknown-pool questions), so that the model learns what they mean;",
        "the `paraphrase` rate is measured on the others, who were never asked that way.",
        "",
        "Some failures:",
        "",
        *_failures(record["quality"]),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Re-render the model card of a built model directory from its build record."""
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else DEFAULT_MODEL_DIR
    (out / "MODEL_CARD.md").write_text(model_card(json.loads((out / "build.json").read_text())))
    print(f"wrote {out / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
