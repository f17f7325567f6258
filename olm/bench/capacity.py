"""Capacity figures for docs/scale.md: what each more user costs in memory and time.

    python -m olm.bench capacity --out DIR [--model smollm2-135m] [--config configs/default.yaml] [--adapters 8]

On one frozen base with the config's LoRA shape (`model.lora`), it measures:

- the base: parameters and bytes;
- one adapter: trainable parameters, bytes in memory, bytes of its saved ``adapter_model.safetensors``,
  and AdamW's state after a step (two moments per parameter);
- the resident memory (RSS) each further named adapter adds, with and without its optimizer, over
  ``--adapters`` peft named adapters on the one base (`add_adapter`, olm's per-user layout);
- switching the active adapter (`set_adapter`), evicting one to disk (`save_pretrained` of that adapter)
  and loading it back (`load_adapter`): medians over ``--repeats``;
- the LoRA parameter count of the same shape on larger published architectures (from their configs'
  sizes, no weights needed), where per-user memory grows.

Writes DIR/capacity.json and DIR/capacity.md. The per-turn time per model is the speed benchmark's
(``python -m olm.bench speed``); docs/scale.md combines both.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from olm.backbone import LoRASettings, adapted_blocks, attach_lora, load_base
from olm.bench.memory import current_rss

ROOT = Path(__file__).resolve().parents[2]
MiB = 2**20


@dataclass(frozen=True)
class Shape:
    """The sizes of a decoder that set its LoRA parameter count (per block: q/k/v/o, gate/up/down)."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    kv_dim: int
    params_b: float  # published parameter count, billions


PUBLISHED: tuple[Shape, ...] = (  # sizes from the models' config.json on the hub
    Shape("SmolLM2-135M", 576, 1536, 30, 192, 0.135),
    Shape("Qwen2.5-0.5B", 896, 4864, 24, 128, 0.494),
    Shape("SmolLM2-1.7B", 2048, 8192, 24, 2048, 1.71),
    Shape("Qwen2.5-7B", 3584, 18944, 28, 512, 7.62),
    Shape("Llama-3.1-8B", 4096, 14336, 32, 1024, 8.03),
)

MODULE_DIMS = {  # target module → (in, out) in terms of a Shape
    "q_proj": lambda s: (s.hidden, s.hidden), "k_proj": lambda s: (s.hidden, s.kv_dim),
    "v_proj": lambda s: (s.hidden, s.kv_dim), "o_proj": lambda s: (s.hidden, s.hidden),
    "gate_proj": lambda s: (s.hidden, s.intermediate), "up_proj": lambda s: (s.hidden, s.intermediate),
    "down_proj": lambda s: (s.intermediate, s.hidden),
}  # fmt: skip


def lora_params(shape: Shape, lora: LoRASettings) -> int:
    """Trainable parameters of one adapter of `lora`'s shape on `shape`: r·(in + out) per adapted matrix."""
    adapted = adapted_blocks(lora, shape.layers)
    blocks = shape.layers if adapted is None else len(adapted)
    per_block = sum(lora.r * sum(MODULE_DIMS[m](shape)) for m in lora.target_modules if m in MODULE_DIMS)
    return blocks * per_block


def lora_settings(config: Path) -> LoRASettings:
    """The `model.lora` block of a ``cli.py fit`` YAML config."""
    raw = (yaml.safe_load(config.read_text()) or {}).get("model", {}).get("lora", {}) or {}
    fields = {"r", "alpha", "dropout", "target_modules", "bias", "layers", "lower_fraction"}
    return LoRASettings(**{k: v for k, v in raw.items() if k in fields})


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def settled_rss() -> int:
    gc.collect()
    return current_rss()


def measure(model_name: str, lora: LoRASettings, adapters: int, repeats: int) -> dict[str, Any]:
    """Memory and time figures of named adapters on one base (see the module docstring)."""
    before = settled_rss()
    base, tokenizer = load_base(model_name)
    base_params = sum(p.numel() for p in base.parameters())
    base_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    model = attach_lora(base, lora)
    loaded = settled_rss()
    config = model.peft_config["default"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_lora = sum(p.numel() for p in trainable)
    ids = tokenizer("The capital of France is Paris.", return_tensors="pt").input_ids

    def one_step(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        opt = torch.optim.AdamW(params, lr=1e-4)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return opt

    opt = one_step(trainable)
    opt_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        saved = sum(f.stat().st_size for f in Path(tmp).rglob("adapter_model.safetensors"))

    names = [f"user{i}" for i in range(adapters)]
    start = settled_rss()
    for name in names:
        model.add_adapter(name, config)
    with_adapters = settled_rss()
    optimizers = []
    for name in names:
        model.set_adapter(name)
        optimizers.append(one_step([p for n, p in model.named_parameters() if f".{name}." in n]))
    with_optimizers = settled_rss()

    switch = median_seconds(lambda: (model.set_adapter(names[0]), model.set_adapter(names[-1])), repeats) / 2
    with tempfile.TemporaryDirectory() as tmp:
        evict = median_seconds(lambda: model.save_pretrained(tmp, selected_adapters=[names[0]]), repeats)
        saved_dir = next(p.parent for p in Path(tmp).rglob("adapter_model.safetensors"))

        def reload() -> None:
            model.load_adapter(str(saved_dir), adapter_name="reloaded", is_trainable=True)
            model.delete_adapter("reloaded")

        model.set_adapter(names[-1])
        load = median_seconds(reload, repeats)
    del optimizers, opt
    return {
        "base_model": model_name, "base_params": base_params, "base_mib": base_bytes / MiB,
        "process_rss_mib": {"before": before / MiB, "base_and_adapter": loaded / MiB},
        "lora": asdict(lora), "lora_params": n_lora, "adapter_mib": n_lora * 4 / MiB,
        "adapter_safetensors_mib": saved / MiB, "adamw_state_mib": opt_bytes / MiB,
        "rss_per_adapter_mib": (with_adapters - start) / adapters / MiB,
        "rss_per_adapter_with_optimizer_mib": (with_optimizers - start) / adapters / MiB,
        "adapters_measured": adapters,
        "switch_ms": switch * 1e3, "evict_save_ms": evict * 1e3, "reload_ms": load * 1e3, "repeats": repeats,
    }  # fmt: skip


def published_rows(lora: LoRASettings) -> list[dict[str, Any]]:
    rows = []
    for shape in PUBLISHED:
        n = lora_params(shape, lora)
        rows.append({"model": shape.name, "params_b": shape.params_b, "lora_params": n,
                     "adapter_mib": n * 4 / MiB, "adapter_bf16_mib": n * 2 / MiB,
                     "adapter_and_adamw_mib": n * 4 * 3 / MiB})  # fmt: skip
    return rows


def markdown(result: dict[str, Any], command: str) -> str:
    m = result["measured"]
    lines = [
        f"`{command}`", "",
        f"Measured on `{m['base_model']}` ({m['base_params'] / 1e6:.1f} M parameters, {m['base_mib']:.0f} MiB fp32), "
        f"LoRA {m['lora']['r']}/{m['lora']['alpha']} on {', '.join(m['lora']['target_modules'])}"
        + (f", lower_fraction {m['lora']['lower_fraction']}" if m["lora"]["lower_fraction"] < 1 else "") + ":", "",
        "| figure | value |", "|---|---|",
        f"| LoRA parameters per adapter | {m['lora_params']:,} |",
        f"| adapter in memory (fp32) | {m['adapter_mib']:.2f} MiB |",
        f"| saved adapter_model.safetensors | {m['adapter_safetensors_mib']:.2f} MiB |",
        f"| AdamW state per adapter | {m['adamw_state_mib']:.2f} MiB |",
        f"| RSS per further named adapter (over {m['adapters_measured']}) | {m['rss_per_adapter_mib']:.2f} MiB |",
        f"| RSS per further adapter with its optimizer stepped | {m['rss_per_adapter_with_optimizer_mib']:.2f} MiB |",
        f"| switch the active adapter (set_adapter) | {m['switch_ms']:.2f} ms |",
        f"| evict one adapter to disk (save_pretrained) | {m['evict_save_ms']:.1f} ms |",
        f"| load it back (load_adapter) | {m['reload_ms']:.1f} ms |",
        "", "Same LoRA shape on published architectures (parameter count from their sizes):", "",
        "| model | params | LoRA params | adapter fp32 | adapter bf16 | adapter + AdamW (fp32) |", "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in result["published"]:
        lines.append(f"| {r['model']} | {r['params_b']} B | {r['lora_params']:,} | {r['adapter_mib']:.1f} MiB | "
                     f"{r['adapter_bf16_mib']:.1f} MiB | {r['adapter_and_adamw_mib']:.1f} MiB |")  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m olm.bench capacity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--model", default="smollm2-135m", help="base model (built-in name, directory or hub id)")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml", help="config whose model.lora is used")
    p.add_argument("--adapters", type=int, default=8, help="named adapters added to measure the per-adapter RSS")
    p.add_argument("--repeats", type=int, default=5, help="repeats of each timed operation (median)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.adapters < 1 or args.repeats < 1 or args.threads < 1:
        p.error("--adapters, --repeats and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    lora = lora_settings(args.config)
    result = {
        "measured": measure(args.model, lora, args.adapters, args.repeats),
        "published": published_rows(lora),
        "platform": {"machine": platform.platform(), "torch": torch.__version__, "threads": args.threads},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "capacity.json").write_text(json.dumps(result, indent=2))
    command = "python -m olm.bench capacity " + " ".join(sys.argv[1:] if argv is None else argv)
    table = markdown(result, command)
    (args.out / "capacity.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
