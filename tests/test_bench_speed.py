"""Speed benchmark (`python -m olm.bench speed`): end to end on tiny models, the minimal loop's
arithmetic and tokens against OnlineLM's, forced generation length, the base-copy check, the
stream, the summary arithmetic and the settings."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from olm.backbone import LoRASettings, attach_lora, load_base
from olm.bench import memory, minimal, speed
from olm.bench.__main__ import main as bench_main
from olm.facts import DetectorConfig, FactDetector
from olm.generation import GenerationSettings, generate_reply
from olm.losses import online_loss
from olm.module import OptimSettings
from olm.render import render_exchange

QWEN_SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 4, "num_kv_heads": 2,
              "vocab_size": 3000}  # fmt: skip
RUN = {"block": 3, "warmup": 1, "early_at": 3, "window": 3, "sweep_turns": 3}


def flags(prefix: str, values: dict) -> list[str]:
    return [arg for k, v in values.items() for arg in (f"--{prefix}.{k}", str(v))]


@pytest.fixture
def peft_model(tiny_model_dir):
    base, tok = load_base(tiny_model_dir)
    return attach_lora(base, LoRASettings()), tok


def test_bench_writes_speed_json_for_both_models(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "speed"
    argv = [
        "--out", str(out), "--tiny.base_model", tiny_model_dir, *flags("tiny", {**RUN, "turns": 8}),
        *flags("qwen", {**RUN, "turns": 5}), *flags("qwen.shape", QWEN_SHAPE), "--threads", "1", "--isolate", "false",
        "--cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    assert bench_main(["speed", *argv]) == 0
    report = json.loads((out / "speed.json").read_text())
    assert report["command"].startswith("python -m olm.bench speed --out")
    assert {"cpu_count", "cpus_usable", "torch"} <= set(report["machine"])
    assert set(report["models"]) == {"olm-tiny", "qwen2.5-0.5b"}
    for name, fig in report["models"].items():
        values = [
            fig["overhead_ratio"], fig["rss_ratio"], fig["rss_ratio_fit"], fig["flatness"]["turn_time"],
            fig["flatness"]["rss"], fig["memory"]["activation_bytes"], fig["memory"]["base_bytes"],
        ]  # fmt: skip
        assert all(math.isfinite(v) and v > 0 for v in values), (name, values)
        # other tests' live models of the same shape count too in-process: exactly 1 is checked isolated (slow test)
        assert fig["base_copies"] >= 1.0 and fig["memory"]["base_ptrs_unchanged"]
        assert fig["token_mismatches"] == 0  # the minimal loop trained on exactly OnlineLM's tokens
        assert fig["torch_threads"] == 1 and set(fig["threads_ms"]) == {"1", "2"}
        assert "fact" not in fig["kinds"] and sum(fig["kinds"].values()) == fig["turns"]
        assert set(fig["callbacks_ms"]) >= {"FactReplay"} and "SpeedProbe" not in fig["callbacks_ms"]
        phases = fig["phases_ms"]
        assert phases["onlinelm"]["base_forward"] > 0 and phases["minimal"]["adapter_forward_backward"] > 0
        raw = json.loads((out / name / "raw.json").read_text())
        assert len(raw["online"]["loop"]) == len(raw["minimal"]["turn"]) == fig["turns"]  # blocks cover every turn
    assert report["models"]["olm-tiny"]["turns"] == 8 and report["models"]["qwen2.5-0.5b"]["turns"] == 5
    assert report["models"]["qwen2.5-0.5b"]["parameters"] == pytest.approx(3000 * 32, rel=0.5)
    assert "overhead_ratio" in (out / "speed.md").read_text() and "| olm-tiny |" in capsys.readouterr().out


def test_generating_arms_both_time_generation(tmp_path, tiny_model_dir):
    out = tmp_path / "speed"
    argv = [
        "--out", str(out), "--models", "[olm-tiny]", "--tiny.base_model", tiny_model_dir,
        *flags("tiny", {**RUN, "turns": 4}), "--generate_tokens", "3", "--threads", "1", "--logger", "false",
        "--isolate", "false", "--drop_callbacks", "[FactReplay]",
    ]  # fmt: skip
    assert speed.main(argv) == 0
    fig = json.loads((out / "speed.json").read_text())["models"]["olm-tiny"]
    assert fig["phases_ms"]["onlinelm"]["generate"] > 0 and fig["phases_ms"]["minimal"]["generate"] > 0
    assert fig["phases_ms"]["onlinelm"]["logger"] == 0 and "FactReplay" not in fig["callbacks_ms"]


@pytest.mark.slow  # ~10 s on a quiet machine (a fresh process imports torch), 20+ s on a busy one
def test_isolated_run_measures_its_own_process(tmp_path, tiny_model_dir):
    out = tmp_path / "speed"
    argv = [
        "--out", str(out), "--models", "[olm-tiny]", "--tiny.base_model", tiny_model_dir,
        *flags("tiny", {**RUN, "turns": 6}), "--threads", "1",
    ]  # fmt: skip
    assert speed.main(argv) == 0
    fig = json.loads((out / "speed.json").read_text())["models"]["olm-tiny"]
    mem = fig["memory"]
    assert mem["peak_rss_fit"] >= mem["rss_train_start"] > mem["rss_imports"] > 0  # a fresh process loaded the model
    assert fig["one_base_copy"] and fig["base_copies"] == pytest.approx(1.0) and fig["turns"] == 6


def test_minimal_loop_computes_online_loss_on_rendered_tokens(peft_model):
    model, tok = peft_model
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # adapter != base, so the KL term is not 0
    model.eval()  # no LoRA dropout: both computations see the same network
    loop = minimal.MinimalLoop(model, tok, OptimSettings(), kl_lambda=0.3, task_lambda=0.7, max_tokens=512)
    user, reply = "Tell me something nice about tea.", "I think tea makes a calm choice."
    ids = loop.render(user, reply)
    assert torch.equal(ids[0], render_exchange(tok, user, reply).input_ids)
    base = loop.base_logits(ids)
    ones = torch.ones(ids.shape)
    ref = online_loss(model(input_ids=ids).logits, base, ids, ones, ones, 0.3, 0.7)
    assert ref["kl"] > 1e-4
    assert loop.loss(ids, base).item() == pytest.approx(ref["loss"].item(), rel=1e-5)


def test_minimal_step_updates_only_lora_and_reports_phases(peft_model):
    model, tok = peft_model
    loop = minimal.MinimalLoop(model, tok, OptimSettings(lr=1e-2), kl_lambda=0.1, task_lambda=1.0, max_tokens=512)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rec = loop.step("Hello there, how are you today?", "Sure. I find jazz lovely.")
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert set(speed.MINIMAL_FIELDS) - {"generate"} <= set(rec) and rec["turn"] >= rec["base_forward"] > 0
    assert loop.activation_bytes("Hello there, how are you today?", "Sure.") > 0
    generating = minimal.MinimalLoop(model, tok, OptimSettings(), 0.1, 1.0, 512, generate_tokens=2)
    assert generating.step("Hi", "unused")["generate"] > 0


def test_forced_length_reaches_onlinelm_generation(peft_model):
    model, tok = peft_model
    msgs = [{"role": "user", "content": "Hi"}]
    prompt = tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), return_tensors="pt")
    tok.eos_token = tok.convert_ids_to_tokens(int(model(**prompt).logits[0, -1].argmax()))  # greedy: 1 token, then eos
    hf, lengths = model.get_base_model(), []
    original = hf.generate

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        lengths.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    hf.generate = spy
    generate_reply(model, tok, msgs, GenerationSettings(max_new_tokens=6))
    hf.generation_config.min_new_tokens = 6  # what SpeedProbe sets for --generate_tokens 6
    generate_reply(model, tok, msgs, GenerationSettings(max_new_tokens=6))
    assert lengths == [1, 6]


def test_base_copies_counts_a_second_model(peft_model):
    model, _ = peft_model
    before = memory.base_copies(model)  # >= 1: models of the same shape left by earlier tests may still be alive
    second = copy.deepcopy(model.get_base_model())  # noqa: F841  (kept alive for the count)
    assert before >= 1.0 and memory.base_copies(model) == pytest.approx(before + 1.0)


def test_stream_turns_are_chat_or_questions_of_varying_length():
    turns = speed.make_turns(300, seed=1, reply_sentences=3)
    detector = FactDetector(DetectorConfig())
    assert len(turns) == 300 and all(detector.detect(u) is None for u, _ in turns)
    assert len({len(r) for _, r in turns}) > 10 and turns == speed.make_turns(300, seed=1, reply_sentences=3)


def test_summary_ratios_follow_their_definitions():
    n = 10
    online = {"turn": [0.010] * n, "loop": [0.012] * n, "callbacks": [0.0] * n, "logger": [0.001] * n}
    online["cb:Monitor"] = [0.0] * 8 + [0.004] * 2  # a periodic callback: median 0, mean 1 ms after the warmup
    online.update({k: [0.002] * n for k in speed.STEP_PHASES}, tokens=[10] * n)
    minimal = {k: [0.001] * n for k in speed.MINIMAL_PHASES} | {"turn": [0.008] * n, "tokens": [10] * n}
    mem = {
        "base_bytes": 600, "activation_bytes": 400, "peak_rss_load": 4000, "peak_rss_fit": 3000, "rss_imports": 1000,
        "base_copies_start": 1.0, "base_copies_end": 1.0, "base_ptrs_unchanged": True,
    }  # fmt: skip
    raw = {
        "online": online, "minimal": minimal, "rss": [100] * 5 + [110] * 5, "memory": mem, "threads": {},
        "kinds": {"chat": n}, "token_mismatches": 0, "parameters": 1, "dtype": "torch.float32", "device": "cpu",
        "torch_threads": 1, "wall_s": 1.0, "loadavg": [0, 0, 0], "adapter_toggle_ms": 0.1,
    }  # fmt: skip
    run = speed.ModelRun(config="x", base_model=None, shape=speed._tiny_run().shape, turns=n, warmup=2, early_at=2,
                         window=3)  # fmt: skip
    fig = speed.summarize(raw, run)
    assert fig["overhead_ratio"] == pytest.approx(1.5) and fig["step_overhead_ratio"] == pytest.approx(1.25)
    assert fig["rss_ratio"] == pytest.approx(4.0) and fig["rss_ratio_fit"] == pytest.approx(3.0)
    assert fig["rss_ratio_net"] == pytest.approx(2.0)
    assert fig["flatness"]["rss"] == pytest.approx(1.1) and fig["flatness"]["turn_time"] == pytest.approx(1.0)
    assert fig["callbacks_ms"] == {"Monitor": {"median": 0.0, "mean": pytest.approx(1.0)}}
    assert fig["phases_ms"]["onlinelm"]["lightning"] == pytest.approx(1.0)  # 12 - 10 - 0 - 1 ms
    assert fig["phases_ms"]["onlinelm"]["step_other"] == pytest.approx(10 - 2 * len(speed.STEP_PHASES))
    assert speed.meets_targets(fig) == {
        "overhead_ratio": False, "one_base_copy": True, "flatness_turn_time": True, "flatness_rss": True,
    }  # fmt: skip


def test_settings_errors_name_the_field():
    with pytest.raises(ValueError, match="threads must be >= 1, got 0.*generate_tokens"):
        speed.SpeedConfig(threads=0, generate_tokens=-1)
    with pytest.raises(ValueError, match="turns must be >= 1"):
        speed.ModelRun(config="x", base_model=None, shape=speed._tiny_run().shape, turns=0)
    with pytest.raises(ValueError, match="num_heads"):
        speed.Shape(hidden_size=30, intermediate_size=8, num_layers=1, num_heads=4, num_kv_heads=2)
    tokenizer, _ = speed.bench_tokenizer(speed.SpeedConfig(tokenizer_turns=20))
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        speed.build_random_base(speed.Shape(32, 64, 1, 4, 2, vocab_size=10), tokenizer, None, 0)


def test_dispatcher_rejects_unknown_subcommands(capsys):
    assert bench_main([]) == 2 and bench_main(["nope"]) == 2
    assert "speed" in capsys.readouterr().err
