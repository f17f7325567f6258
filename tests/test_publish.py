"""Versioned adapter directories (olm/publish.py): each publish is a whole new ``v<N>`` PEFT
directory, ``latest``/``LATEST`` flipped atomically, old versions pruned; every reader resolves a
root to its latest version; a published directory is one PEFT loads exactly and vLLM's loader
accepts (checked without vLLM)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
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
    vllm_compatibility_problems,
    vllm_max_lora_rank,
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


def test_without_symlinks_the_latest_file_alone_points(peft_model, tmp_path, monkeypatch):
    def no_symlinks(*args, **kwargs):
        raise OSError(1, "Operation not permitted")  # e.g. Windows without the privilege

    monkeypatch.setattr(os, "symlink", no_symlinks)
    root = tmp_path / "adapter"
    publish_adapter(peft_model, "default", root)
    assert publish_adapter(peft_model, "default", root) == root / "v2"
    assert sorted(p.name for p in root.iterdir()) == [LATEST_FILE, "v1", "v2"]
    assert resolve_adapter_dir(root) == root / "v2"


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


# ----------------------------------------------------------------------------- the format vLLM's loader accepts


@pytest.fixture
def olm_version(tiny_model_dir, tmp_path) -> Path:
    """What a run writes: AdapterCheckpoint's version of an OnlineLM adapter on the lower half of the
    blocks (peft ``layers_to_transform``, as ``lora.lower_fraction`` makes it), with non-zero B."""
    from olm.backbone import LoRASettings
    from olm.callbacks import AdapterCheckpoint
    from olm.module import OnlineLM

    torch.manual_seed(0)
    module = OnlineLM(base_model=tiny_model_dir, lora=LoRASettings(lower_fraction=0.5))
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p))
    return AdapterCheckpoint(dirpath=str(tmp_path / "adapter")).save(None, module)


def test_a_run_s_adapter_is_one_vllm_accepts(olm_version):
    config = json.loads((olm_version / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [0]  # ignored by vLLM; only block 0 has tensors
    assert {"r", "lora_alpha", "target_modules"} <= config.keys()
    names = list(load_file(olm_version / "adapter_model.safetensors"))
    assert names and all(".layers.0." in n for n in names)
    assert {"memory.json", "olm_state.json", "README.md", "tokenizer.json"} <= {p.name for p in olm_version.iterdir()}
    assert vllm_compatibility_problems(olm_version) == []
    assert vllm_compatibility_problems(olm_version.parent) == []  # the version root: its latest version
    assert vllm_max_lora_rank(config["r"]) == 8


def test_a_named_adapter_published_flat_is_one_vllm_accepts(peft_model, tmp_path):
    assert vllm_compatibility_problems(publish_adapter(peft_model, "alice", tmp_path / "alice")) == []


def broken(version: Path, tmp_path: Path, config: dict | None = None, rename=None, drop=None) -> Path:
    """A copy of `version` with `config` merged into adapter_config.json (None values delete a key)
    and its tensors renamed by `rename` / dropped by `drop`."""
    import shutil

    from safetensors.torch import save_file

    out = tmp_path / "broken"
    shutil.copytree(version, out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    for key, value in (config or {}).items():
        cfg.pop(key) if value is None else cfg.__setitem__(key, value)
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    tensors = load_file(out / "adapter_model.safetensors")
    tensors = {(rename(k) if rename else k): v for k, v in tensors.items() if not (drop and drop(k))}
    save_file(tensors, out / "adapter_model.safetensors")
    return out


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"config": {"r": None}}, r"lacks \['r'\]"),
        ({"config": {"target_modules": None, "lora_alpha": None}}, r"lacks \['lora_alpha', 'target_modules'\]"),
        ({"config": {"use_dora": True}}, "does not support DoRA"),
        ({"config": {"modules_to_save": ["lm_head"]}}, "modules_to_save"),
        ({"config": {"bias": "lora_only"}}, "no adapter bias"),
        ({"config": {"rank_pattern": {"q_proj": 8}}}, "rank_pattern is set: vLLM ignores it"),
        ({"config": {"r": 1024}}, "integer rank from 1 to 512"),
        ({"config": {"r": 2}}, "not of rank r=2"),
        ({"config": {"peft_type": "IA3"}}, "LoRA adapters only"),
        ({"config": {"target_modules": ["k_proj"]}}, "not among target_modules"),
        ({"rename": lambda k: k.replace(".lora_A.", ".lora_A.alice.").replace(".lora_B.", ".lora_B.alice.")},
         r"lora_A\.alice\.weight.*vLLM reads only"),
        ({"rename": lambda k: k.replace("base_model.model.", "")}, "does not start with 'base_model.model.'"),
        ({"drop": lambda k: ".lora_B." in k}, "has lora_A only"),
    ],
    ids=["no-r", "no-alpha-targets", "dora", "modules_to_save", "bias", "rank_pattern", "rank-too-high",
         "rank-mismatch", "not-lora", "untargeted", "adapter-name-in-tensor", "no-prefix", "no-B"],
)  # fmt: skip
def test_what_vllm_would_refuse_is_named(olm_version, tmp_path, change, problem):
    problems = vllm_compatibility_problems(broken(olm_version, tmp_path, **change))
    assert problems and any(re.search(problem, p) for p in problems), problems


def test_missing_or_unreadable_files_are_problems_not_errors(olm_version, tmp_path):
    assert "does not exist" in vllm_compatibility_problems(tmp_path / "missing")[0]
    weightless = broken(olm_version, tmp_path)
    (weightless / "adapter_model.safetensors").write_bytes(b"not safetensors")
    assert "does not load" in vllm_compatibility_problems(weightless)[-1]
    (weightless / "adapter_model.safetensors").unlink()
    assert vllm_compatibility_problems(weightless) == [f"no adapter_model.safetensors in {weightless}"]
    (weightless / "adapter_config.json").write_text("{")
    assert "adapter_config.json does not load" in vllm_compatibility_problems(weightless)[0]


# ----------------------------------------------------------------------------- docs/serving.md's watcher


def watcher_code() -> str:
    """The Python block of docs/serving.md that defines the watcher."""
    text = (Path(__file__).parents[1] / "docs" / "serving.md").read_text(encoding="utf-8")
    [code] = [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "def sync(" in block]
    return code


class FakeVLLM:
    """A stand-in vLLM server: records each POST (route, json body); `fail` maps a lora_name to the
    (status, message) its next load gets."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.calls: list[tuple[str, dict]] = []
        self.fail: dict[str, tuple[int, str]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, message = outer.fail.pop(body["lora_name"], (200, "Success"))
                if status == 200:
                    outer.calls.append((self.path, body))
                self.send_response(status)
                self.end_headers()
                self.wfile.write(message.encode())

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self) -> list[tuple[str, str, str | None]]:
        calls, self.calls = self.calls, []
        return [(route, body["lora_name"], body.get("lora_path")) for route, body in calls]


def flip(root: Path, n: int) -> Path:
    version = make_version(root, n)
    (root / LATEST_FILE).write_text(f"v{n}\n")
    with contextlib.suppress(FileNotFoundError):
        (root / LATEST_LINK).unlink()
    os.symlink(f"v{n}", root / LATEST_LINK)
    return version.resolve()


def test_the_documented_watcher_loads_each_new_version_under_a_new_name(tmp_path, capsys):
    server, watcher = FakeVLLM(), {}
    try:
        exec(compile(watcher_code(), "docs/serving.md", "exec"), watcher)  # noqa: S102 - the doc's own code
        watcher["SERVER"] = server.url
        adapters, served = tmp_path / "adapters", {}
        alice1 = flip(adapters / "alice", 1)
        watcher["sync"]([str(adapters)], served)
        assert server.take() == [("/v1/load_lora_adapter", "alice-v1", str(alice1))]
        watcher["sync"]([str(adapters)], served)
        assert server.take() == []  # nothing new
        alice2, bob1 = flip(adapters / "alice", 2), flip(adapters / "bob", 1)
        server.fail["bob-v1"] = (500, "busy")
        watcher["sync"]([str(adapters)], served)
        assert server.take() == [("/v1/load_lora_adapter", "alice-v2", str(alice2)),
                                 ("/v1/unload_lora_adapter", "alice-v1", None)]  # fmt: skip
        assert "bob-v1: not loaded" in capsys.readouterr().err
        watcher["sync"]([str(adapters)], served)  # retried
        assert server.take() == [("/v1/load_lora_adapter", "bob-v1", str(bob1))]
        assert served == {"alice": "alice-v2", "bob": "bob-v1"}
        single = tmp_path / "run" / "adapter"  # one user's run: the root itself; loaded before the watcher started
        flip(single, 3)
        server.fail["adapter-v3"] = (400, "The lora adapter 'adapter-v3' has already been loaded.")
        watcher["sync"]([str(single)], served)
        assert served["adapter"] == "adapter-v3" and "not loaded" not in capsys.readouterr().err
    finally:
        server.server.shutdown()


def test_the_check_command(olm_version, tmp_path, capsys):
    from olm.publish import main

    assert main([str(olm_version.parent)]) == 0
    assert capsys.readouterr().out == f"{olm_version}: ok\n"
    bad = broken(olm_version, tmp_path, config={"use_dora": True})
    assert main([str(bad), str(olm_version)]) == 1
    assert "vLLM would refuse it:\n  - use_dora is set" in capsys.readouterr().out
