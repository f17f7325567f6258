"""Many streams on Lightning DDP, one shared adapter: sharding, lockstep steps, per-rank resume state.

    python cli.py fit --config configs/tiny.yaml --trainer.strategy ddp --trainer.devices 2 --trainer.accelerator cpu

Every rank (process) reads the whole log and trains only the turns of *its* conversations, every
rank holds the same adapter, and each optimizer step applies what all ranks learned in it. The rules:

**Sharding** (`shard_of`): a turn belongs to rank ``sha256(conversation_id) % world_size`` (a
stable, well-mixed hash: Python's `hash` is salted per process, crc32 is linear). A conversation's
turns stay in order on one rank, and each turn of the log is trained by exactly one rank. The filter
runs inside the stream (`olm.data.ChatTurnStream`), after numbering: offsets, history and the
skipped-input counts are those of the whole log on every rank.

**Lockstep** (`Lockstep`): collectives deadlock unless every rank calls them in the same order,
yet ranks have different work per `training_step`: a fact turn takes ``steps_per_fact`` steps, a
chat turn ``steps_per_turn``, a replay (its queue is per rank) more, a skipped turn none, and one
rank's shard ends before another's. Instead of agreeing on a plan up front (which would need the
turn read and classified before the replay that precedes it is learned: a change to the
single-process order), every optimizer step is a meeting: a rank about to step posts ``(working,
lr multiplier)`` in an all_gather; a rank that has finished this `training_step` posts ``(idle,
its turn count, done, stop)`` and keeps joining the steps of the others (with a zero gradient)
until one all_gather finds every rank idle. That last gather also carries the round's results:
the turns trained (summed: `OnlineLM.turns_trained` is the *global* count, the same on every rank,
so step- and turn-based callbacks such as checkpoints fire on all ranks at once), whether every
shard has ended and whether any rank was asked to stop; then all ranks end together. Each step
costs two collectives (a small all_gather and the gradient all_reduce), each `training_step` one more.

**Gradients: summed, not averaged.** Ranks do not split one batch: each learns a different turn,
and single-process olm takes a full step for every turn. The sum keeps each turn's update as
large as it would be alone (exactly, for SGD, to first order); the mean would divide it by the
number of ranks, and by how many of them happen to be busy (an idle rank's zero would halve the
other's step). The all_reduce is explicit (``torch.distributed.all_reduce`` on one flat buffer
of the LoRA gradients), not DDP's reducer: the reducer expects one backward per forward and
averages; olm takes several backwards per `training_step` and, on idle ranks, none. DDP's
gradient sync is switched off for the `training_step` (``require_backward_grad_sync``, what
``no_sync()`` sets; Lightning's manual optimization would otherwise prepare the reducer before
every ``manual_backward``). Clipping (``optim.grad_clip``) applies to the summed gradient, and a
step is skipped on every rank when any rank's loss or the summed gradient is not finite.

**Learning rates**: each rank's turn has its own multiplier m_r (fact 5, chat 0.1, ...). With
M = max m_r over the ranks stepping, each rank's gradient is scaled by m_r / M and every rank
steps with lr = base × M: the SGD update is then exactly Σ_r base · m_r · g_r, each rank's own
update. For AdamW it is an approximation (its normalization does not commute with the sum), exact
when one rank steps alone or all share a multiplier; weight decay uses base × M.

**I/O**: only rank 0 writes (checkpoints, adapter directories, TensorBoard, transcripts, reports,
the summary; `Trainer.log_dir` is pinned so it needs no collective: `OlmTrainer`). Fact memories
are per rank (each rank detects the facts of its conversations and replays them): a checkpoint
holds every rank's memory, the adapter directory's ``memory.json`` rank 0's.

**Resume**: `state_dict` hooks run on every rank, but only rank 0's checkpoint is written. So the
data module's stream position and the module's per-rank state (memory, replay queue, RNG, ...)
are gathered (`gather_ranks`: ``all_gather_object``) into ``"ranks"`` of that checkpoint, and on
load each rank takes its own (`own_rank_state`). A checkpoint of N ranks resumes only on N ranks
(`ResumeError` otherwise); a single-process checkpoint resumes on any number (every rank starts at
its offset and keeps its own conversations from there: nothing is lost or trained twice).

Not supported (refused with one sentence): ``per_user`` adapters, stdin and follow mode under DDP.
FSDP is not an option: Lightning does not support manual optimization with FSDP (Lightning issue
#19685), and olm's steps are manual.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from olm.errors import ResumeError, RunError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the world
def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) when torch.distributed is not initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_of(conversation_id: str, world_size: int) -> int:
    """The rank that trains the turns of `conversation_id`: a stable hash modulo `world_size`.

    The hash is the first 8 bytes of the id's SHA-256 (the same in every process and Python
    version; Python's `hash` is salted per process). Not crc32: it is linear, so ids that differ only
    in their last character (``conv0``, ``conv1``, ...) all have the same parity and would all land
    on one of two ranks."""
    digest = hashlib.sha256(str(conversation_id).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % world_size


class _ShardEnd:
    """What a rank's stream yields once its shard is exhausted (DDP only): it still joins the steps."""

    def __repr__(self) -> str:
        return "END_OF_SHARD"


END_OF_SHARD = _ShardEnd()


def padded_with_end(items: Iterator[Any]) -> Iterator[Any]:
    """`items`, then `END_OF_SHARD` forever: under DDP a rank's loader never runs dry before the others'
    (Lightning would stop calling its `training_step`, and the other ranks would wait for it)."""
    yield from items
    while True:
        yield END_OF_SHARD


# ----------------------------------------------------------------------------- per-rank state
def gather_ranks(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """`state` (a `state_dict` of this rank) with every rank's state under ``"ranks"`` (rank order).

    Call on every rank (Lightning runs the `state_dict` hooks on all ranks and writes rank 0's
    result). Single process: `state` unchanged, no collective.
    """
    rank, size = world()
    if size == 1 or state is None:
        return state
    states: list[Any] = [None] * size
    dist.all_gather_object(states, {k: v for k, v in state.items() if k != "ranks"})
    return {**state, "ranks": states}


def own_rank_state(state: dict[str, Any] | None, what: str = "checkpoint") -> dict[str, Any] | None:
    """This rank's part of a state `gather_ranks` made (or `state` itself, saved by a single process).

    Raises:
        ResumeError: the state was saved by a different number of ranks than this run has.
    """
    if not isinstance(state, dict) or "ranks" not in state:
        return state
    rank, size = world()
    saved = state["ranks"]
    if not isinstance(saved, list) or len(saved) != size:
        n = len(saved) if isinstance(saved, list) else "?"
        raise ResumeError(
            f"the {what} was written by a run of {n} processes (DDP ranks), this run has {size}: each rank's "
            f"stream position and fact memory are its own, so resume with {n} processes (--trainer.devices x "
            "--trainer.num_nodes), or start fresh with --ckpt_path null"
        )
    return saved[rank]


# ----------------------------------------------------------------------------- trainer
class OlmTrainer(L.Trainer):
    """Lightning's Trainer whose `log_dir` needs no collective under DDP.

    ``Trainer.log_dir`` broadcasts rank 0's directory, so every rank must call it together; olm's
    rank-zero-only writers (adapter, report, summary) call it on rank 0 alone, which would hang.
    Under DDP the logger's version is fixed on every rank before the ranks start (`pin_log_dir`), so
    each rank computes the same directory by itself (`Lockstep` checks it at the first step).
    """

    @property
    def log_dir(self) -> str | None:
        if self.world_size > 1 and self.loggers and isinstance(self.loggers[0], (TensorBoardLogger, CSVLogger)):
            return self.loggers[0].log_dir
        return super().log_dir


def pin_log_dir(trainer: L.Trainer) -> None:
    """Fix the loggers' version now (DDP): rank 0 creates ``version_N`` only after every rank has
    joined the process group, so each process, pinning it at start, finds the same next N."""
    if trainer.world_size > 1:
        for logger in trainer.loggers:
            _ = logger.version


def launcher_rank() -> int:
    """This process's rank as Lightning's DDP launcher set it (0 in the launching process and without DDP)."""
    import os

    return int(os.environ.get("NODE_RANK", 0) or 0) + int(os.environ.get("LOCAL_RANK", 0) or 0)


# ----------------------------------------------------------------------------- lockstep
_WORKING, _MULT, _TURNS, _DONE, _STOP = range(5)


class ShardDone(Exception):
    """Raised inside a `training_step` whose rank read `END_OF_SHARD`."""


class _ShardIter:
    """The `dataloader_iter` of a DDP step: `END_OF_SHARD` raises `ShardDone`."""

    def __init__(self, inner: Iterator) -> None:
        self.inner = inner

    def __iter__(self) -> _ShardIter:
        return self

    def __next__(self) -> Any:
        item = next(self.inner)
        batch = item[0] if isinstance(item, tuple) else item
        if batch is END_OF_SHARD:
            raise ShardDone
        return item


def lockstep(module: L.LightningModule) -> Lockstep | None:
    """The module's `Lockstep` under DDP (made at the first call), None in a single process."""
    trainer = module._trainer
    if trainer is None or trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return None
    sync = getattr(module, "_olm_lockstep", None)
    if sync is None:
        sync = module._olm_lockstep = Lockstep(module)
    return sync


class Lockstep:
    """Optimizer steps in lockstep across DDP ranks, gradients summed (module docstring).

    `OnlineLM.training_step` hands each step to `round`; `OnlineLM._clip_and_step` hands each
    optimizer step to `step`.

    Raises:
        RunError: (at the first step) a setting DDP does not support, or ranks that disagree on
            their output directory.
    """

    def __init__(self, module: L.LightningModule) -> None:
        problems = []
        if getattr(module, "users", None) is not None:
            problems.append("--model.per_user is not supported with DDP (one shared adapter): run it in one process")
        datamodule = getattr(module.trainer, "datamodule", None)
        config = getattr(datamodule, "config", None)
        if config is not None and (config.source == "-" or config.follow):
            problems.append("DDP needs a log to read (not stdin, not --data.follow): run chat in one process")
        if problems:
            raise RunError("; ".join(problems))
        self.inside = False
        self.rounds = 0
        self.unsynced = unsync_metrics(module.trainer.callbacks)
        log_dirs: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(log_dirs, module.trainer.log_dir)
        if len(set(log_dirs)) > 1:
            raise RunError(f"DDP ranks disagree on the run directory ({sorted(set(map(str, log_dirs)))}): "
                           "give --trainer.logger a fixed version")  # fmt: skip

    # --------------------------------------------------------------- one training_step
    def round(self, module: L.LightningModule, dataloader_iter: Iterator) -> Any:
        """Run `module.training_step` on this rank's next turn, then join the other ranks' steps
        until all are done; returns the step's outputs (``{"turn": None}`` when another rank
        trained a turn and this one did not, so that turn-counting callbacks agree), or raises
        StopIteration on every rank at once when every shard has ended or a stop was requested."""
        trainer = module.trainer
        start, done, out = module.turns_trained, False, None
        ddp = trainer.strategy.model
        sync_before = getattr(ddp, "require_backward_grad_sync", None)
        if sync_before is not None:  # no DDP reducer: the gradients are summed in `step`
            ddp.require_backward_grad_sync = False
        self.inside = True
        try:
            out = module.training_step(_ShardIter(dataloader_iter))
        except ShardDone:
            done = True
        except StopIteration:  # a stream that ends without END_OF_SHARD (not olm's data module)
            done, trainer.should_stop = True, False
        finally:
            self.inside = False
        mine = module.turns_trained - start
        datamodule = getattr(trainer, "datamodule", None)
        stop = bool(getattr(getattr(datamodule, "stop", None), "requested", False))
        table = self._idle(module, turns=mine, done=done, stop=stop)
        if sync_before is not None:
            ddp.require_backward_grad_sync = sync_before
        self.rounds += 1
        module.round_start_turns = start  # `olm.turns.crossed`: a round may cross a multiple of a cadence
        module.turns_trained = start + int(table[:, _TURNS].sum().item())
        if not mine:
            module.last = None  # this rank trained nothing this step: no stale record for rank-0 writers
        if bool(table[:, _DONE].min().item()) or bool(table[:, _STOP].max().item()):
            trainer.should_stop = True
            trainer._results.reset(metrics=False)  # as the single-process end: no stale values re-logged
            raise StopIteration
        if module.turns_trained == start:
            return None
        return out if out else {"turn": None}

    def _idle(self, module: L.LightningModule, turns: int, done: bool, stop: bool) -> torch.Tensor:
        """Join the other ranks' steps with a zero gradient until a gather finds every rank idle."""
        while True:
            table = self._gather(module, [0.0, 0.0, float(turns), float(done), float(stop)])
            if not table[:, _WORKING].any():
                return table
            self._apply(module, module.optimizers(), table, scale=0.0, nonfinite=False)

    # --------------------------------------------------------------- one optimizer step
    def step(self, module: L.LightningModule, opt: Any, loss: torch.Tensor) -> float:
        """This rank's optimizer step, taken together with every rank (the others may be idle).

        The local gradient (from ``manual_backward``) is scaled by m / M, summed over the ranks,
        clipped, and applied with lr = base × M (module docstring). Returns the clipped-before norm
        of the summed gradient, the same on every rank."""
        group = opt.param_groups[0]
        mult = group["lr"] / group["base_lr"]
        table = self._gather(module, [1.0, mult, 0.0, 0.0, 0.0])
        return self._apply(module, opt, table, scale=None, nonfinite=not bool(torch.isfinite(loss)), mult=mult)

    def _apply(
        self, module: L.LightningModule, opt: Any, table: torch.Tensor, scale: float | None, nonfinite: bool,
        mult: float = 0.0,
    ) -> float:
        working = table[:, _WORKING] > 0
        top = float(table[working, _MULT].max().item())
        if scale is None:
            scale = mult / top if top > 0 else 0.0
        params = [p for group in opt.param_groups for p in group["params"]]
        device = params[0].device
        grads = [p.grad.detach().reshape(-1) if p.grad is not None else p.detach().new_zeros(p.numel()) for p in params]
        flag = torch.tensor([1.0 if nonfinite else 0.0], device=device, dtype=params[0].dtype)
        flat = torch.cat([*grads, flag])
        if scale != 1.0:
            flat[:-1].mul_(scale)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n
        any_nonfinite = bool(flat[-1].item() > 0)
        saved = [g["lr"] for g in opt.param_groups]
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * top
        try:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, module.optim.grad_clip))
            if not any_nonfinite and math.isfinite(grad_norm):
                opt.step()
            else:  # the same decision on every rank: the adapters stay identical
                module.nonfinite_steps += 1
                log.warning("skipped a step with non-finite loss or gradient on a rank (turn %d)", module.turns_trained)
        finally:
            for g, lr in zip(opt.param_groups, saved):
                g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        return grad_norm

    @staticmethod
    def _gather(module: L.LightningModule, row: list[float]) -> torch.Tensor:
        mine = torch.tensor(row, dtype=torch.float64, device=module.device)
        rows = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(rows, mine)
        return torch.stack(rows).cpu()


def _never() -> bool:
    return False


def unsync_metrics(objects: Any, depth: int = 3) -> int:
    """Make the torchmetrics metrics held by `objects` (callbacks, and what they hold, `depth` levels
    down) per-rank: no sync on compute. torchmetrics syncs a metric's state across ranks whenever
    torch.distributed is up, a collective every rank must enter together; olm's monitors measure on
    each rank when its own turns call for it (plasticity after a turn of its own, recall of its own
    facts), so a sync would hang. Their values are those of each rank; rank 0's are logged.
    Returns the number of metrics changed."""
    from torchmetrics import Metric

    seen: set[int] = set()
    changed = 0

    def visit(obj: Any, level: int) -> None:
        nonlocal changed
        if id(obj) in seen or level > depth:
            return
        seen.add(id(obj))
        if isinstance(obj, Metric):
            for sub in obj.modules():
                if isinstance(sub, Metric) and sub.distributed_available_fn is not _never:
                    sub.sync_on_compute, sub.dist_sync_on_step, sub.distributed_available_fn = False, False, _never
                    changed += 1
            return
        if isinstance(obj, torch.nn.Module):
            children: Any = list(obj.children())
        elif isinstance(obj, dict):
            children = list(obj.values())
        elif isinstance(obj, (list, tuple)):
            children = list(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            children = list(vars(obj).values())
        else:
            return
        for child in children:
            visit(child, level + 1)

    visit(objects, 0)
    return changed


# ----------------------------------------------------------------------------- checks
def adapter_digest(module: L.LightningModule) -> str:
    """SHA-256 of the trainable (LoRA) tensors' bytes, in name order: equal iff the adapters are."""
    digest = hashlib.sha256()
    for name, p in sorted(module.named_parameters(), key=lambda item: item[0]):
        if p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
