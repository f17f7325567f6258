"""Speed benchmark (`python -m olm.bench speed`): end to end on tiny models, the minimal loop's
arithmetic and tokens against OnlineLM's (plain and fact turns), forced generation length, the
base-copy check, the stream, the summary arithmetic and the settings."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from olm.augment import AugmentSettings
from olm.backbone import LoRASettings, attach_lora, load_base
from olm.bench import memory, minimal, speed
from olm.bench.__main__ import main as bench_main
from olm.facts import DetectorConfig, FactDetector
from olm.generation import GenerationSettings, generate_reply
from olm.locality import LocalitySettings
from olm.losses import online_loss
from olm.module import ObjectiveSettings, OnlineLM, OptimSettings
from olm.render import render_exchange
from tests.test_module import fit, turns

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
        "--out", str(out), "--models", "[olm-tiny, qwen2.5-0.5b]", "--tiny.base_model", tiny_model_dir,
        *flags("tiny", {**RUN, "turns": 12}), *flags("qwen", {**RUN, "turns": 5}), *flags("qwen.shape", QWEN_SHAPE),
        "--threads", "1", "--isolate", "false", "--cache_dir", str(tmp_path / "cache"), "--fact_share", "0.3",
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
        kinds = fig["kinds"]
        assert kinds.get("chat", 0) + kinds.get("question", 0) + kinds.get("fact", 0) == fig["turns"]
        assert set(fig["callbacks_ms"]) >= {"FactReplay"} and "SpeedProbe" not in fig["callbacks_ms"]
        phases = fig["phases_ms"]["plain"]
        assert phases["onlinelm"]["base_forward"] > 0 and phases["minimal"]["adapter_forward_backward"] > 0
        raw = json.loads((out / name / "raw.json").read_text())
        assert len(raw["online"]["loop"]) == len(raw["minimal"]["turn"]) == fig["turns"]  # blocks cover every turn
        assert raw["online"]["fact"] == raw["minimal"]["fact"]  # the minimal loop took the fact turns as facts
    tiny = report["models"]["olm-tiny"]
    assert tiny["turns"] == 12 and report["models"]["qwen2.5-0.5b"]["turns"] == 5
    assert tiny["kinds"]["fact"] >= 2 and tiny["turns_measured"]["fact"] >= 1  # seed 0 draws facts in 12 turns
    assert math.isfinite(tiny["overhead_ratio_fact"]) and tiny["fact_turn_ratio"]["minimal"] > 0
    assert tiny["phases_ms"]["fact"]["minimal"]["optimizer_step"] > 0
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
    phases = fig["phases_ms"]["plain"]
    assert phases["onlinelm"]["generate"] > 0 and phases["minimal"]["generate"] > 0
    assert phases["onlinelm"]["logger"] == 0 and "FactReplay" not in fig["callbacks_ms"]


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
    example = render_exchange(tok, user, reply)
    b = loop.batch(loop.rows(user, reply, None), [])
    assert torch.equal(b.ids[0], example.input_ids) and b.locality is None
    base = loop.base_logits(b)
    ids, ones = example.input_ids[None], torch.ones(1, example.num_tokens)
    ref = online_loss(model(input_ids=ids).logits, base, ids, example.loss_mask[None].float(), ones, 0.3, 0.7)
    assert ref["kl"] > 1e-4
    assert loop.loss(b, base, 0.3).item() == pytest.approx(ref["loss"].item(), rel=1e-5)


@pytest.mark.parametrize("train_statements, siblings", [(False, 0), (True, 0), (False, 1)])
def test_minimal_fact_turn_computes_onlinelm_fact_loss(tiny_model_dir, tmp_path, train_statements, siblings):
    prompts = tmp_path / "locality.txt"
    prompts.write_text("Tell me a joke.\nWhat is two plus two?\nName a colour.\n")
    torch.manual_seed(0)
    module = OnlineLM(
        base_model=tiny_model_dir, lora=LoRASettings(dropout=0.0), optim=OptimSettings(lr=1e-3, steps_per_fact=1),
        objective=ObjectiveSettings(loss_on="reply"),
        augment=AugmentSettings(qa_pairs=2, paraphrases=1, train_statements=train_statements, siblings=siblings),
        locality=LocalitySettings(weight=2.0, prompts=str(prompts), per_step=2),
    )  # fmt: skip
    module.memory.store(module.detector.detect("Ali is my uncle."), "Ali is my uncle.", "Ali is your uncle.", 0)
    for name, p in module.model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # adapter != base, so both KL terms are not 0
    module.token_weights = lambda example, ctx: example.loss_mask.float()  # the minimal loop's CE weights
    before = {n: p.detach().clone() for n, p in module.model.named_parameters() if "lora_" in n}
    user = "Zara is my sister."
    fit(module, turns((user, "Nice, so Zara is your sister.")))
    assert module.last.kind == "fact"
    fact = speed.fact_turn_of(module, user)
    assert len(fact.locality) == 2 and module.locality.position == 2  # the rotation is left where it was
    with torch.no_grad():
        for n, p in module.model.named_parameters():
            if n in before:
                p.copy_(before[n])  # the adapter OnlineLM's (only) step computed its loss with
    loop = minimal.MinimalLoop(
        module.model, module.tokenizer, module.optim, 1.0, 1.0, 512, loss_on="reply", augment=module.augment,
        locality=LocalitySettings(weight=2.0),
    )  # fmt: skip
    rows = loop.rows(user, module.last.reply, fact)
    assert len(rows) == 1 + 2 + 1 + siblings  # the exchange, 2 Q/A pairs, 1 paraphrase, the rehearsed sibling
    assert [s.fact.subject for s in fact.siblings] == ["Ali"] * siblings
    assert all("uncle" in r.text for r in rows[4:])
    b = loop.batch(rows, fact.locality)
    assert b.ids.shape[0] == 4 + siblings and b.locality.ids.shape[0] == 2 and b.locality.positions.any()
    assert fact.kl_lambda == module.latest_scalars["turn/kl_lambda"] != module.policy.kl_lambdas["fact"]
    loss = loop.loss(b, loop.base_logits(b), fact.kl_lambda)
    assert loss.item() == pytest.approx(module.last.loss, rel=1e-5)
    rec = loop.step(user, module.last.reply, fact)
    assert rec["optimizer_step"] > 0 and rec["tokens"] == rows[0].num_tokens


def test_minimal_step_updates_only_lora_and_reports_phases(peft_model):
    model, tok = peft_model
    loop = minimal.MinimalLoop(model, tok, OptimSettings(lr=1e-2), kl_lambda=0.1, task_lambda=1.0, max_tokens=512)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rec = loop.step("Hello there, how are you today?", "Sure. I find jazz lovely.")
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert set(speed.MINIMAL_PHASES) - {"generate"} <= set(rec) and rec["turn"] >= rec["base_forward"] > 0
    assert loop.activation_bytes("Hello there, how are you today?", "Sure.") > 0
    generating = minimal.MinimalLoop(model, tok, OptimSettings(), 0.1, 1.0, 512, generate_tokens=2)
    assert generating.step("Hi", "unused")["generate"] > 0


def test_minimal_step_keeps_each_lora_a_in_its_null_space(peft_model):
    from olm.nullspace import NullSpace, lora_layers

    model, tok = peft_model
    g = torch.Generator().manual_seed(0)
    spaces = {}
    for name, layer in lora_layers(model).items():
        d = layer.lora_A["default"].weight.shape[1]
        spaces[name] = NullSpace(torch.linalg.qr(torch.randn(d, d // 4, generator=g))[0])
    loop = minimal.MinimalLoop(model, tok, OptimSettings(lr=1e-2), 0.1, 1.0, 512, null_spaces=spaces)
    loop.step("Hello there, how are you today?", "Sure. I find jazz lovely.")
    for name, layer in lora_layers(model).items():
        assert (layer.lora_A["default"].weight @ spaces[name].basis).abs().max() < 1e-5


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


def test_stream_turns_are_chat_or_questions_of_varying_length_and_a_share_of_facts():
    stream = speed.make_turns(300, seed=1, reply_sentences=3)
    detector = FactDetector(DetectorConfig())
    assert len(stream) == 300 and all(detector.detect(u) is None for u, _ in stream)
    assert len({len(r) for _, r in stream}) > 10 and stream == speed.make_turns(300, seed=1, reply_sentences=3)
    mixed = speed.make_turns(300, seed=1, reply_sentences=3, fact_share=0.2)
    facts = [detector.detect(u) for u, _ in mixed]
    assert 30 < sum(f is not None for f in facts) < 90
    assert all(detector.pattern(f.pattern).answer for f in facts if f is not None)  # each one has augmentation


def test_summary_ratios_follow_their_definitions():
    n = 10
    online = {"turn": [0.010] * n, "loop": [0.012] * n, "callbacks": [0.0] * n, "logger": [0.001] * n}
    online["fact"] = [0.0] * 4 + [1.0] * 3 + [0.0] * 3  # turns 4..6 are fact turns, turn 6 also learned a replay
    online["replayed"] = [0.0] * 6 + [2.0] + [0.0] * 3
    online["loop"] = [0.012] * 4 + [0.036] * 3 + [0.012] * 3
    online["cb:Monitor"] = [0.0] * 8 + [0.004] * 2  # a periodic callback: median 0, mean 1 ms after the warmup
    online.update({k: [0.002] * n for k in speed.STEP_PHASES}, tokens=[10] * n)
    minimal = {k: [0.001] * n for k in speed.MINIMAL_PHASES} | {"turn": [0.008] * 4 + [0.030] * 3 + [0.008] * 3}
    minimal["tokens"] = [10] * n
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
    assert fig["overhead_ratio_fact"] == pytest.approx(1.2) and fig["turns_measured"] == {"plain": 5, "fact": 2}
    assert fig["fact_turn_ratio"] == {"onlinelm": pytest.approx(3.0), "minimal": pytest.approx(3.75)}
    assert fig["rss_ratio"] == pytest.approx(4.0) and fig["rss_ratio_fit"] == pytest.approx(3.0)
    assert fig["rss_ratio_net"] == pytest.approx(2.0)
    assert fig["flatness"]["rss"] == pytest.approx(1.1) and fig["flatness"]["turn_time"] == pytest.approx(1.0)
    assert fig["callbacks_ms"] == {"Monitor": {"median": 0.0, "mean": pytest.approx(1.0)}}
    assert fig["phases_ms"]["plain"]["onlinelm"]["lightning"] == pytest.approx(1.0)  # 12 - 10 - 0 - 1 ms
    assert fig["phases_ms"]["fact"]["onlinelm"]["lightning"] == pytest.approx(25.0)  # 36 - 10 - 0 - 1 ms
    assert fig["phases_ms"]["plain"]["onlinelm"]["step_other"] == pytest.approx(10 - 2 * len(speed.STEP_PHASES))
    assert speed.meets_targets(fig) == {
        "overhead_ratio": False, "overhead_ratio_fact": False, "one_base_copy": True, "flatness_turn_time": True,
        "flatness_rss": False,
    }  # fmt: skip
    md = speed.markdown({"machine": {**speed.machine_info(), "loadavg_start": [1.0, 1.0, 1.0]}, "command": "c",
                         "models": {"olm-tiny": {**fig, "parameters": 3.7e6}}})  # fmt: skip
    assert "| olm-tiny | 3.7 M | 10 | 12.0 / 8.0 | 1.500 | 36.0 / 30.0 | 1.200 | 3.00 |" in md


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
