"""Many streams on Lightning DDP, one shared adapter (issue 14, item 3; `olm.distributed`).

Real `cli.py fit` processes with ``--trainer.strategy ddp --trainer.devices 2 --trainer.accelerator
cpu`` (gloo) on a tiny model and a log of a few conversations, each rank recording the turns it
trained (`tests/ddp_probe.py`) and `olm.callbacks.RankSync` checking after every step that both
ranks hold the same adapter (the run fails if they do not). Every process gets a timeout: a DDP
deadlock is a failure, never a hang. The stream's sharding and the per-rank state are also tested
in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from test_cli import ROOT, local_config, run_fit

from olm.data import ChatTurnStream
from olm.distributed import gather_ranks, own_rank_state, shard_of
from olm.errors import ResumeError
from olm.runs import run_versions
from olm.turns import crossed

TINY = ROOT / "configs" / "tiny.yaml"
HOOKED = ROOT / "tests" / "hooked_cli.py"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT / "tests")}  # fmt: skip
MESSAGES = ["Zara is my sister.", "Hello there, how are you today?", "Xiomara lives in Lisbon.", "Who is Zara?"]
# conv1, conv3, conv4, conv5 hash to rank 1, conv0 and conv2 to rank 0: rank 0's shard ends first
CONVERSATIONS = [f"conv{i}" for i in range(6)]


def write_conversations(path: Path, turns_each: int = 3, bad_line: bool = True) -> Path:
    """A log of `CONVERSATIONS`, `turns_each` turns each (facts, chat, questions), one bad line."""
    with path.open("w") as fh:
        for c, conv in enumerate(CONVERSATIONS):
            messages = []
            for t in range(turns_each):
                messages += [{"role": "user", "content": MESSAGES[(c + t) % len(MESSAGES)]},
                             {"role": "assistant", "content": "Got it."}]  # fmt: skip
            fh.write(json.dumps({"id": conv, "messages": messages}) + "\n")
            if bad_line and c == 2:
                fh.write("{not json\n")
    return path


def all_turns(log: Path) -> list[tuple[str, int]]:
    return [(t.conversation_id, t.offset) for t in ChatTurnStream(str(log))]


def ddp_cmd(config: Path, model_dir: str, log: Path, *extra: str, hooked: bool = False, devices: int = 2) -> list[str]:
    script = HOOKED if hooked else ROOT / "cli.py"
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", str(devices)] if devices > 1 else []
    return [sys.executable, str(script), "fit", "--config", str(config), "--model.base_model", model_dir,
            "--data.source", str(log), "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            *ddp, "--trainer.callbacks+=ddp_probe.TurnRecorder", "--trainer.callbacks+=olm.callbacks.RankSync",
            *extra]  # fmt: skip


def run(args: list[str], cwd: Path, record: Path, hook: str | None = None, timeout: float = 240):
    record.mkdir(parents=True, exist_ok=True)
    env = {**ENV, "OLM_TURN_RECORD": str(record), **({"OLM_HOOK": hook} if hook else {})}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def recorded(record: Path) -> dict[int, list[dict]]:
    """rank → the turns it trained, in order."""
    out: dict[int, list[dict]] = {}
    for path in sorted(record.glob("rank*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        out[rows[0]["rank"]] = rows
    return out


def every(n: int) -> dict[str, str]:
    return {"every_n_turns: 50\n        save_top_k": f"every_n_turns: {n}\n        save_top_k"}


# ----------------------------------------------------------------------------- in-process
def test_shards_partition_the_stream_by_conversation_with_whole_stream_offsets_and_counts(tmp_path):
    log = write_conversations(tmp_path / "log.jsonl", turns_each=4)
    full = list(ChatTurnStream(str(log)))
    shards = []
    for rank in range(2):
        stream = ChatTurnStream(str(log))
        stream.rank, stream.world_size = rank, 2
        shards.append(list(stream))
    assert shards[0] and shards[1]
    by_offset = {t.offset: t for t in full}
    assert sorted(t.offset for s in shards for t in s) == sorted(by_offset)  # every turn exactly once
    for rank, shard in enumerate(shards):
        assert [t.offset for t in shard] == sorted(t.offset for t in shard)  # in stream order
        assert all(shard_of(t.conversation_id, 2) == rank for t in shard)
        assert all(t == by_offset[t.offset] for t in shard)  # same offsets, skipped counts, history
    assert {t.conversation_id for t in shards[0]}.isdisjoint({t.conversation_id for t in shards[1]})
    assert max(t.skipped for t in full) == 1 and any(t.skipped == 1 for s in shards for t in s)
    # with DataLoader workers too: each worker keeps every n-th of the rank's turns, in order
    stream = ChatTurnStream(str(log))
    stream.rank, stream.world_size = 1, 2
    assert list(DataLoader(stream, batch_size=None, num_workers=2)) == shards[1]
    # a resumed rank starts at its own next offset and still keeps only its conversations
    stream = ChatTurnStream(str(log), start_offset=9)
    stream.rank, stream.world_size = 1, 2
    assert [t.offset for t in stream] == [t.offset for t in shards[1] if t.offset >= 9]


def test_shard_of_is_stable_and_spreads_sequential_ids():
    assert [shard_of(c, 2) for c in CONVERSATIONS] == [0, 1, 0, 1, 1, 1]  # the same in every process
    assert {shard_of(f"user-{i}", 4) for i in range(40)} == {0, 1, 2, 3}


def test_rank_states_single_process_unchanged_and_another_world_size_refused():
    state = {"next_offset": 3, "source": "x"}
    assert gather_ranks(state) is state and own_rank_state(state) is state  # no collective, no new key
    two = {**state, "ranks": [{"next_offset": 3}, {"next_offset": 5}]}
    with pytest.raises(ResumeError, match="2 processes .*this run has 1"):
        own_rank_state(two, "stream state")


def test_crossed_is_the_modulo_in_one_process_and_catches_a_jumped_multiple():
    class Module:
        turns_trained = 0

    m = Module()
    for turns in range(1, 30):
        m.turns_trained = turns
        assert crossed(m, 5) == (turns % 5 == 0) and not crossed(m, 0)
    m.turns_trained, m.round_start_turns = 6, 4  # a DDP step trained two turns: 4 -> 6 passes 5
    assert crossed(m, 5) and crossed(m, 2) and not crossed(m, 4)


def test_a_checkpoint_of_two_ranks_does_not_resume_in_one_process(tmp_path, tiny_model_dir, monkeypatch):
    run_fit(TINY, tmp_path, tiny_model_dir, monkeypatch, 4)
    [ckpt] = list(tmp_path.rglob("last.ckpt"))
    state = torch.load(ckpt, weights_only=True)
    assert "ranks" not in state["olm"] and "ranks" not in state["ChatStreamDataModule"]  # one process: as before
    for key in ("olm", "ChatStreamDataModule"):  # as a 2-rank DDP run writes it
        state[key]["ranks"] = [dict(state[key]), dict(state[key])]
    two = tmp_path / "two.ckpt"
    torch.save(state, two)
    with pytest.raises(SystemExit) as err:
        run_fit(TINY, tmp_path, tiny_model_dir, monkeypatch, 4, "--ckpt_path", str(two))
    assert "2 processes (DDP ranks), this run has 1" in str(err.value) and str(err.value).startswith("olm: ")


def test_lockstep_step_scales_by_the_multiplier_and_steps_with_the_largest(tmp_path):
    """The LR rule on one real (1-process gloo) group, the other rank's row given: with SGD the
    update is base × m × g whatever the other rank's multiplier M (grad × m/M, lr base × M)."""
    import torch.distributed as dist
    from types import SimpleNamespace

    from olm.distributed import Lockstep

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        p = torch.nn.Parameter(torch.zeros(3))
        opt = torch.optim.SGD([p], lr=0.5)
        opt.param_groups[0]["base_lr"] = 0.5
        module = SimpleNamespace(optim=SimpleNamespace(grad_clip=1e9), nonfinite_steps=0, turns_trained=0,
                                 device=torch.device("cpu"))  # fmt: skip
        g = torch.tensor([1.0, -2.0, 4.0])
        for mult, other in ((0.1, 5.0), (5.0, 0.1), (2.0, None)):
            before = p.detach().clone()
            p.grad = g.clone()
            rows = [[1.0, mult, 0, 0, 0], [1.0, other, 0, 0, 0] if other else [0.0, 0, 0, 0, 0]]
            table = torch.tensor(rows, dtype=torch.float64)
            Lockstep._apply(None, module, opt, table, scale=None, nonfinite=False, mult=mult)
            torch.testing.assert_close(p.detach(), before - 0.5 * mult * g)
            assert opt.param_groups[0]["lr"] == 0.5 and p.grad is None  # lr restored, gradient cleared
        p.grad = g.clone()
        rows = torch.tensor([[1.0, 1.0, 0, 0, 0]], dtype=torch.float64)
        before = p.detach().clone()
        Lockstep._apply(None, module, opt, rows, scale=None, nonfinite=True, mult=1.0)  # a non-finite loss: no step
        assert torch.equal(p.detach(), before) and module.nonfinite_steps == 1
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- real DDP processes
def test_ddp_trains_every_turn_exactly_once_with_identical_adapters(tmp_path, tiny_model_dir):
    log = write_conversations(tmp_path / "log.jsonl")
    config = local_config(TINY, tmp_path, every(4))
    done = run(ddp_cmd(config, tiny_model_dir, log), tmp_path, tmp_path / "record")
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = recorded(tmp_path / "record")
    assert sorted(ranks) == [0, 1] and len(ranks[0]) < len(ranks[1])  # rank 0's shard ends first
    trained = sorted((r["conversation_id"], r["offset"]) for rows in ranks.values() for r in rows)
    assert trained == sorted(all_turns(log))  # every turn of the log, once
    for rank, rows in ranks.items():
        assert [r["offset"] for r in rows] == sorted(r["offset"] for r in rows)
        assert all(shard_of(r["conversation_id"], 2) == rank for r in rows)
    # both ranks step together: the global step after each turn only grows, on both ranks alike
    steps = sorted(r["global_step"] for rows in ranks.values() for r in rows)
    assert steps[-1] >= len(trained)  # fact turns take 2 steps
    [run_dir] = run_versions(tmp_path / "runs" / "tiny")  # one run directory, written once
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["olm"]["turns_trained"] == len(trained)  # the global count
    positions = [s["next_offset"] for s in state["ChatStreamDataModule"]["ranks"]]
    assert positions == [ranks[0][-1]["offset"] + 1, ranks[1][-1]["offset"] + 1]
    assert len(state["olm"]["ranks"]) == 2
    assert done.stdout.count("olm: trained") == 1  # the summary is printed once


@pytest.mark.slow  # the default suite's time budget: a subprocess kill/restart, ~40-60 s on 2 cores
def test_ddp_kill_and_resume_trains_each_turn_once_after_the_checkpoint(tmp_path, tiny_model_dir):
    log = write_conversations(tmp_path / "log.jsonl", turns_each=4)
    config = local_config(TINY, tmp_path, every(4))
    # rank 0 (the writer) is killed as it starts its second checkpoint: last.ckpt is the first one,
    # the turns trained since are lost; rank 1 loses its peer and must exit, not hang
    hook = "olm.callbacks.checkpoint:atomic_write:kill-before:2"
    killed = run(ddp_cmd(config, tiny_model_dir, log, hooked=True), tmp_path, tmp_path / "run1", hook=hook)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    [run0] = run_versions(tmp_path / "runs" / "tiny")
    saved = [run0 / "checkpoints" / name for name in ("last.ckpt", "previous.ckpt")]  # last.ckpt is set aside first
    ckpt = torch.load(next(p for p in saved if p.is_file()), weights_only=True)
    positions = [s["next_offset"] for s in ckpt["ChatStreamDataModule"]["ranks"]]
    first = recorded(tmp_path / "run1")
    kept = [(r["conversation_id"], r["offset"]) for rank, rows in first.items() for r in rows
            if r["offset"] < positions[rank]]  # fmt: skip
    assert 0 < len(kept) < len(all_turns(log))  # killed mid-stream

    resumed = run(ddp_cmd(config, tiny_model_dir, log, "--ckpt_path", "last"), tmp_path, tmp_path / "run2")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    second = recorded(tmp_path / "run2")
    assert all(r["offset"] >= positions[rank] for rank, rows in second.items() for r in rows)
    again = [(r["conversation_id"], r["offset"]) for rows in second.values() for r in rows]
    assert sorted(kept + again) == sorted(all_turns(log))  # exactly once over both runs
    final = torch.load(run_versions(tmp_path / "runs" / "tiny")[-1] / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["olm"]["turns_trained"] == len(all_turns(log))

