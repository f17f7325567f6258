"""The locality cache on disk (`olm.locality`): reused by a later run on the same base, never by another."""

from __future__ import annotations

import logging

import pytest
import torch

import olm.locality as locality_mod
from olm.locality import LocalitySettings, LocalityTerm, cache_key
from olm.backbone import LoRASettings
from olm.module import OnlineLM


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("OLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "locality"


def _model(tiny_model_dir, **settings) -> OnlineLM:
    return OnlineLM(base_model=tiny_model_dir, locality=LocalitySettings(weight=1.0, per_step=2, **settings))


def _no_generation(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("the locality cache was regenerated")

    monkeypatch.setattr(locality_mod, "generate_replies", refuse)


def _same(a, b) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("input_ids", "positions", "top_log_p", "top_ids"))


def test_a_second_run_reads_the_base_outputs_from_disk(tiny_model_dir, cache, monkeypatch):
    first = _model(tiny_model_dir)
    rows = first.locality.next_rows(first.model)
    [path] = list(cache.glob("*.pt"))
    assert path == first.locality.disk_path(first.model)
    second = _model(tiny_model_dir)  # a fresh process would build exactly this
    _no_generation(monkeypatch)
    again = second.locality.next_rows(second.model)
    assert len(second.locality._cache) == len(second.locality.prompts)
    assert all(_same(a, b) for a, b in zip(rows, again))
    assert all(_same(first.locality._cache[i], second.locality._cache[i]) for i in first.locality._cache)


def test_the_key_changes_with_the_base_the_prompts_and_the_settings(tiny_model_dir, cache, tmp_path):
    model = _model(tiny_model_dir)
    term, peft = model.locality, model.model
    key = cache_key(peft, term.tokenizer, term.prompts, term.settings)
    assert key == cache_key(peft, term.tokenizer, list(term.prompts), LocalitySettings(weight=5.0, per_step=9))
    assert key != cache_key(peft, term.tokenizer, term.prompts[1:], term.settings)
    assert key != cache_key(peft, term.tokenizer, term.prompts, LocalitySettings(weight=1.0, top_k=8))
    assert key != cache_key(peft, term.tokenizer, term.prompts, LocalitySettings(weight=1.0, reply_tokens=5))
    with torch.no_grad():  # trained LoRA weights do not change the base; a changed base weight does
        lora = next(p for n, p in peft.named_parameters() if "lora_B" in n)
        lora.add_(1.0)
        assert cache_key(peft, term.tokenizer, term.prompts, term.settings) == key
        base = next(p for n, p in peft.named_parameters() if "lora_" not in n and n.endswith("base_layer.weight"))
        base[0, 0] += 1e-3
        assert cache_key(peft, term.tokenizer, term.prompts, term.settings) != key


def test_a_broken_cache_file_is_logged_and_recomputed(tiny_model_dir, cache, caplog):
    first = _model(tiny_model_dir)
    rows = first.locality.next_rows(first.model)
    path = first.locality.disk_path(first.model)
    path.write_bytes(b"not a torch file")
    second = _model(tiny_model_dir)
    with caplog.at_level(logging.WARNING, logger="olm.locality"):
        again = second.locality.next_rows(second.model)
    assert "unreadable" in caplog.text
    assert all(_same(a, b) for a, b in zip(rows, again))
    assert locality_mod.load_rows(path, len(second.locality.prompts)) is not None  # rewritten whole
    assert locality_mod.load_rows(path, len(second.locality.prompts) + 1) is None  # another prompt count


def test_disk_cache_off_writes_nothing_and_an_unwritable_cache_only_warns(tiny_model_dir, cache, caplog):
    off = _model(tiny_model_dir, disk_cache=False)
    off.locality.next_rows(off.model)
    assert not cache.exists()
    cache.parent.mkdir(parents=True)
    cache.write_text("a file where the cache directory should be")
    model = _model(tiny_model_dir)
    with caplog.at_level(logging.WARNING, logger="olm.locality"):
        rows = model.locality.next_rows(model.model)
    assert len(rows) == 2 and "could not write the locality cache" in caplog.text


def test_a_partial_fill_does_not_touch_the_disk(tiny_model_dir, cache, monkeypatch):
    model = _model(tiny_model_dir)
    term = LocalityTerm(model.locality.settings, model.tokenizer)
    term._fill(model.model, [0, 1])  # only part of the prompts: computed, not stored
    assert set(term._cache) == {0, 1} and not cache.exists()


def test_null_space_bases_are_kept_on_disk_and_shared_by_layers_with_one_input(tiny_model_dir, cache, monkeypatch):
    mlp = LoRASettings(target_modules=["gate_proj", "up_proj", "down_proj"])

    def build(energy):
        return OnlineLM(base_model=tiny_model_dir, lora=mlp,
                        locality=LocalitySettings(weight=1.0, null_space_energy=energy))  # fmt: skip

    first = build(0.9)
    projectors = first.locality.projectors(first.model)
    gate = [n for n in projectors if n.endswith("gate_proj")]
    assert gate and all(projectors[n] is projectors[n.replace("gate_proj", "up_proj")] for n in gate)
    assert all(projectors[n] is not projectors[n.replace("gate_proj", "down_proj")] for n in gate)
    assert len(list(cache.glob("*.pt"))) == 2  # the rows and the bases

    def refuse(*_a, **_k):
        raise AssertionError("the null-space bases were recomputed")

    with monkeypatch.context() as patch:
        patch.setattr(locality_mod, "input_moments", refuse)
        second = build(0.9)
        again = second.locality.projectors(second.model)
    assert sorted(again) == sorted(projectors) and all(torch.equal(again[n].basis, projectors[n].basis) for n in projectors)
    other = build(0.5)  # another energy: its own file, other projectors
    assert not torch.equal(other.locality.projectors(other.model)[gate[0]].projector, projectors[gate[0]].projector)
    assert len(list(cache.glob("*.pt"))) == 3
