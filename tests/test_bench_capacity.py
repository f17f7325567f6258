"""The capacity benchmark measures what one more user costs, and its parameter formula is the real count."""

import json

from transformers import AutoConfig

from olm.backbone import LoRASettings, attach_lora, load_base
from olm.bench.capacity import PUBLISHED, Shape, lora_params, main


def shape_of(model_dir: str) -> Shape:
    c = AutoConfig.from_pretrained(model_dir)
    kv = c.hidden_size // c.num_attention_heads * c.num_key_value_heads
    return Shape("tiny", c.hidden_size, c.intermediate_size, c.num_hidden_layers, kv, 0.0)


def test_lora_parameter_formula_matches_peft(tiny_model_dir):
    for lora in (LoRASettings(r=8, target_modules=["gate_proj", "up_proj", "down_proj"], lower_fraction=0.5),
                 LoRASettings(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
                 LoRASettings(r=2, target_modules=["q_proj", "down_proj"], layers=[-1])):  # fmt: skip
        base, _ = load_base(tiny_model_dir)
        model = attach_lora(base, lora)
        real = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert lora_params(shape_of(tiny_model_dir), lora) == real


def test_published_smollm2_shape_is_the_measured_one():
    smol = next(s for s in PUBLISHED if s.name == "SmolLM2-135M")
    lora = LoRASettings(r=8, target_modules=["gate_proj", "up_proj", "down_proj"], lower_fraction=0.67)
    assert lora_params(smol, lora) == 20 * 3 * 8 * (576 + 1536)


def test_capacity_bench_writes_figures(tmp_path, tiny_model_dir):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  lora:\n    r: 4\n    target_modules: [q_proj, v_proj]\n")
    out = tmp_path / "cap"
    assert main(["--out", str(out), "--model", tiny_model_dir, "--config", str(config), "--adapters", "3", "--repeats", "2"]) == 0
    result = json.loads((out / "capacity.json").read_text())
    m = result["measured"]
    assert m["lora_params"] == lora_params(shape_of(tiny_model_dir), LoRASettings(r=4)) > 0
    assert m["adamw_state_mib"] > 0 and m["adapter_safetensors_mib"] > 0 and m["reload_ms"] > 0
    assert len(result["published"]) == len(PUBLISHED) and "| LoRA parameters per adapter |" in (out / "capacity.md").read_text()
