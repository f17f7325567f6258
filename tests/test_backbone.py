"""Base loading: local directories, frozen weights, LoRA shape, and a fast, helpful hub failure."""

import time

import pytest

import olm.backbone as backbone
from olm.backbone import LoRASettings, attach_lora, load_base


def test_local_dir_loads_frozen_and_lora_attaches(tiny_model_dir):
    model, tok = load_base(tiny_model_dir)
    assert not any(p.requires_grad for p in model.parameters())
    peft_model = attach_lora(model, LoRASettings(r=2, alpha=8, target_modules=["q_proj", "v_proj"]))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(("q_proj" in n or "v_proj" in n) for n in trainable)
    assert tok.chat_template is not None and tok.pad_token is not None


def test_lora_layers_restrict_the_adapted_blocks(tiny_model_dir):
    model, _ = load_base(tiny_model_dir)
    depth = model.config.num_hidden_layers
    peft_model = attach_lora(model, LoRASettings(r=2, target_modules=["up_proj"], layers=[0, -1]))
    blocks = {int(n.split(".layers.")[1].split(".")[0]) for n, p in peft_model.named_parameters() if p.requires_grad}
    assert blocks == {0, depth - 1}
    with pytest.raises(ValueError, match="out of range"):
        attach_lora(load_base(tiny_model_dir)[0], LoRASettings(target_modules=["up_proj"], layers=[depth]))
    with pytest.raises(ValueError, match="lora.layers"):
        LoRASettings(layers=[])
    lower = attach_lora(load_base(tiny_model_dir)[0], LoRASettings(target_modules=["up_proj"], lower_fraction=0.5))
    assert {int(n.split(".layers.")[1].split(".")[0]) for n, p in lower.named_parameters() if p.requires_grad} == set(
        range(round(depth / 2))
    )
    with pytest.raises(ValueError, match="not both"):
        LoRASettings(layers=[0], lower_fraction=0.5)


def test_unreachable_hub_fails_fast_naming_local_dir(monkeypatch):
    monkeypatch.setattr(backbone, "_hub_reachable", lambda: False)
    start = time.perf_counter()
    with pytest.raises(OSError, match="--model.base_model DIR"):
        load_base("nobody/no-such-model-xyz")
    assert time.perf_counter() - start < 10


def test_bad_settings_list_every_problem():
    with pytest.raises(ValueError) as err:
        LoRASettings(r=0, alpha=-1, dropout=1.5, target_modules=[])
    for part in ("lora.r", "lora.alpha", "lora.dropout", "target_modules"):
        assert part in str(err.value)
    with pytest.raises(ValueError, match="dtype"):
        load_base("olm-tiny", dtype="float8")


def test_missing_builtin_model_uses_a_stand_in_and_says_how_to_build(monkeypatch, tmp_path, caplog):
    monkeypatch.setitem(backbone.BUILTIN_MODELS, "olm-tiny", tmp_path / "absent")
    monkeypatch.setattr(backbone, "STAND_IN_DIR", tmp_path / "stand-in")
    model, tok = load_base("olm-tiny")
    assert "olm.world.build" in caplog.text and "UNTRAINED" in caplog.text
    assert (tmp_path / "stand-in" / "config.json").is_file() and tok.chat_template is not None


def test_half_precision_without_cpu_support_is_warned_about(tiny_model_dir, monkeypatch, caplog):
    """bfloat16 on an AVX2-only CPU is emulated (a chat turn ~10 s against 0.87 s in float32): loading says so."""
    import torch

    for name, value in (("_is_avx512_bf16_supported", False), ("_is_amx_tile_supported", False)):
        monkeypatch.setattr(torch.cpu, name, lambda value=value: value, raising=False)
    assert "emulated" in backbone.emulated_precision("bfloat16", "cpu")
    assert backbone.emulated_precision("float32", "cpu") is None
    assert backbone.emulated_precision("bfloat16", "meta") is None  # not a CPU
    with caplog.at_level("WARNING", logger="olm.backbone"):
        model, _ = load_base(tiny_model_dir, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16 and "emulated" in caplog.text
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert backbone.emulated_precision("bfloat16", "cpu") is None
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert backbone.emulated_precision("bfloat16", "cpu") is None  # torch cannot tell: no warning
