"""Versioned adapter directories (olm/publish.py): each publish is a whole new ``v<N>`` PEFT
directory, ``latest``/``LATEST`` flipped atomically, old versions pruned; every reader resolves a
root to its latest version; a published directory is one PEFT loads exactly and vLLM's loader
accepts (checked without vLLM)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from olm.publish import (
    LATEST_FILE,
    LATEST_LINK,
    AdapterDirError,
    latest_version,
    prune_versions,
    publish_adapter,
    resolve_adapter_dir,
    versions,
)


def lora_config() -> LoraConfig:
    return LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], layers_to_transform=[0], task_type="CAUSAL_LM")


@pytest.fixture
def peft_model(tiny_model_dir) -> PeftModel:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, lora_config())
    model.add_adapter("alice", lora_config())
    with torch.no_grad():  # B starts at 0: give every LoRA matrix distinct non-zero values
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p))
    return model


def lora_weights(model: PeftModel, adapter: str) -> dict[str, torch.Tensor]:
    """{module path + lora_A/lora_B: weight} of one adapter, adapter name removed."""
    return {
        n.replace(f".{adapter}.", "."): p.detach().clone()
        for n, p in model.named_parameters() if "lora_" in n and f".{adapter}." in n
    }  # fmt: skip


@pytest.mark.parametrize("adapter", ["default", "alice"])
def test_a_published_version_is_a_flat_peft_dir_that_reloads_exactly(peft_model, tiny_model_dir, tmp_path, adapter):
    root = tmp_path / "adapters" / "alice"
    version = publish_adapter(peft_model, adapter, root, keep=3)
    assert version == root / "v1"
    names = sorted(p.name for p in version.iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(names)
    assert all(not (version / n).is_dir() for n in names), names  # no <adapter_name>/ subdirectory
    tensors = load_file(version / "adapter_model.safetensors")
    assert tensors and all(k.startswith("base_model.model.") and "alice" not in k for k in tensors)
    assert os.readlink(root / LATEST_LINK) == "v1" and (root / LATEST_FILE).read_text() == "v1\n"
    assert resolve_adapter_dir(root) == version

    torch.manual_seed(1)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), resolve_adapter_dir(root))
    want, got = lora_weights(peft_model, adapter), lora_weights(loaded, "default")
    assert want.keys() == got.keys() and want
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_each_publish_is_a_new_version_and_only_the_newest_are_kept(peft_model, tmp_path):
    root = tmp_path / "adapter"
    written = [publish_adapter(peft_model, "default", root, lambda d: (d / "extra.txt").write_text("x"), keep=2) for _ in range(4)]
    assert [p.name for p in written] == ["v1", "v2", "v3", "v4"]
    assert [p.name for p in versions(root)] == ["v3", "v4"]
    assert (root / LATEST_LINK / "extra.txt").read_text() == "x"
    assert resolve_adapter_dir(root) == root / "v4" == latest_version(root)
    assert sorted(p.name for p in root.iterdir()) == [LATEST_FILE, "latest", "v3", "v4"]  # no temporary left


def test_keep_is_at_least_one(peft_model, tmp_path):
    with pytest.raises(ValueError, match="keep must be >= 1"):
        publish_adapter(peft_model, "default", tmp_path / "a", keep=0)
    assert not (tmp_path / "a").exists()


def test_pruning_never_deletes_the_version_a_pointer_names(tmp_path):
    for n in (1, 2, 3):
        (tmp_path / f"v{n}").mkdir()
        (tmp_path / f"v{n}" / "adapter_config.json").write_text("{}")
    (tmp_path / LATEST_FILE).write_text("v1\n")
    assert [p.name for p in prune_versions(tmp_path, keep=1)] == ["v2"]
    assert [p.name for p in versions(tmp_path)] == ["v1", "v3"]


def test_a_failed_write_leaves_the_previous_version_and_pointers(peft_model, tmp_path):
    root = tmp_path / "adapter"
    publish_adapter(peft_model, "default", root)

    def boom(directory: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        publish_adapter(peft_model, "default", root, boom)
    assert sorted(p.name for p in root.iterdir()) == [LATEST_FILE, "latest", "v1"]
    assert resolve_adapter_dir(root) == root / "v1"
    assert publish_adapter(peft_model, "default", root) == root / "v2"


def test_orphans_of_a_killed_writer_are_cleared_at_the_next_publish(peft_model, tmp_path):
    root = tmp_path / "adapter"
    publish_adapter(peft_model, "default", root)
    (root / "v2.olm-tmp-999999").mkdir()  # a version being written when the writer died
    (root / "v2.olm-tmp-999999" / "adapter_config.json").write_text("{}")
    os.symlink("v2", root / "latest.olm-tmp-999999")  # a pointer never swapped in
    (root / "LATEST.olm-tmp-999999").write_text("v2\n")
    assert resolve_adapter_dir(root) == root / "v1"  # temporary names are never a version
    assert publish_adapter(peft_model, "default", root) == root / "v2"
    assert sorted(p.name for p in root.iterdir()) == [LATEST_FILE, "latest", "v1", "v2"]


def test_an_unversioned_adapter_dir_is_not_published_over(peft_model, tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(Exception, match="unversioned adapter"):
        publish_adapter(peft_model, "default", tmp_path)


def make_version(root: Path, n: int) -> Path:
    (root / f"v{n}").mkdir(parents=True)
    (root / f"v{n}" / "adapter_config.json").write_text(json.dumps({"n": n}))
    return root / f"v{n}"


def test_resolve_reads_the_symlink_or_the_file_and_takes_the_newer(tmp_path):
    v1, v2 = make_version(tmp_path, 1), make_version(tmp_path, 2)
    (tmp_path / LATEST_FILE).write_text("v1\n")  # no symlink: e.g. copied by a tool that drops them
    assert resolve_adapter_dir(tmp_path) == v1
    (tmp_path / LATEST_FILE).unlink()
    os.symlink("v1", tmp_path / LATEST_LINK)
    assert resolve_adapter_dir(tmp_path) == v1
    (tmp_path / LATEST_FILE).write_text("v2\n")  # a crash between the two flips: the newer whole one
    assert resolve_adapter_dir(tmp_path) == v2


def test_resolve_falls_back_to_the_newest_whole_version(tmp_path, caplog):
    make_version(tmp_path, 1)
    v2 = make_version(tmp_path, 2)
    (tmp_path / "v3").mkdir()  # not a whole adapter
    (tmp_path / LATEST_FILE).write_text("v9\n")  # names nothing there
    with caplog.at_level(logging.WARNING, logger="olm.publish"):
        assert resolve_adapter_dir(tmp_path) == v2
    assert "no usable latest/LATEST pointer" in caplog.text


def test_resolve_a_plain_peft_dir_is_itself_and_anything_else_a_clear_error(tmp_path):
    plain = make_version(tmp_path / "elsewhere", 1)
    assert resolve_adapter_dir(plain) == plain
    assert resolve_adapter_dir(str(plain)) == plain
    with pytest.raises(AdapterDirError, match="does not exist"):
        resolve_adapter_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterDirError, match="not an adapter directory: no adapter_config.json"):
        resolve_adapter_dir(tmp_path / "empty")
    (tmp_path / "broken" / "v1").mkdir(parents=True)
    with pytest.raises(AdapterDirError, match="without any whole version"):
        resolve_adapter_dir(tmp_path / "broken")
