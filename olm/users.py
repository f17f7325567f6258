"""Per-user learning: user ids, and one LoRA adapter, optimizer and fact memory per user on one base.

With ``--model.per_user true`` every turn belongs to a user (the record's ``"user_id"``, the chat's
``--data.user_id`` / ``/user NAME``; `DEFAULT_USER` when none is given). `UserRegistry` keeps, for
each user, a bundle of learned state:

  adapter        a peft *named* adapter on the one frozen base (`adapter_name`: ``u_<sha1[:12]>``,
                 since peft names cannot hold '.'); a new user's starts as a copy of the module's
                 own adapter as built (peft's ``default``, kept frozen as the template), so every
                 user starts from the same weights, whatever order users arrive in
  optimizer      its own AdamW over that adapter's parameters only
  fact memory    its own `olm.memory.FactMemory` (and replay queue)
  locality       its own position in the locality-prompt rotation (`olm.locality`; the cache of
                 the base's outputs is shared: the base never changes)
  random state   its own torch RNG state (LoRA dropout, sampling), seeded from the run's seed and
                 the user id, swapped in while the user is active: what one user's turns draw
                 never shifts what another's draw
  counters       turns trained (the user's memory clock: importance, decay, replay spacing)

So a user's learning depends on that user's turns only: the interleaved stream of many users
gives each the adapter, memory and locality figures a stream of their turns alone would
(tests/test_users.py checks it bit for bit).

At most `max_loaded` users are in memory, least recently used first out: an evicted user's
adapter weights, optimizer state, memory, replay queue, RNG state and counters are written to
``<root>/<user_id>/state-<n>.pt`` (`olm.durable.atomic_write`; `root` is ``<log_dir>/users``)
and read back at the user's next turn. The checkpoint holds the registry (which users exist, LRU
order, counters, the evicted users' state files) and the loaded users' optimizer states and
memories; their LoRA weights are in its state_dict. State files a checkpoint still refers to
(``last.ckpt`` and ``previous.ckpt``: the last two saves) are kept; older ones are removed.

User ids are validated by `user_id_problem` (letters, digits and ``_ . @ -``, starting with a
letter or digit, at most 64 characters): an id names a directory, so ``..``, ``/``, ``\\``,
a leading dot, control characters and over-long ids are refused.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from olm.durable import atomic_write
from olm.errors import ResumeError
from olm.memory import FactMemory
from olm.optimizer import adamw, group_lr, is_lora_b, regroup_state, two_groups

log = logging.getLogger(__name__)

DEFAULT_USER = "default"
"""The user of a turn without a user id (per-user learning on)."""
MAX_USER_ID_CHARS = 64
USER_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]*")
TEMPLATE = "default"
"""peft's name of the adapter the module builds: the frozen starting point of every user's."""
STATE_VERSION = 1


# ----------------------------------------------------------------------------- ids (pure)
def user_id_problem(value: Any) -> str | None:
    """None when `value` is a valid user id, else why not, in words."""
    if not isinstance(value, str):
        return f"a user id must be a string, got {type(value).__name__}"
    if not value:
        return "a user id must not be empty"
    if len(value) > MAX_USER_ID_CHARS:
        return f"a user id has at most {MAX_USER_ID_CHARS} characters, this one {len(value)}"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "a user id must not hold control characters"
    if "/" in value or "\\" in value:
        return "a user id must not hold '/' or '\\' (it names a directory)"
    if value.startswith("."):
        return "a user id must not start with '.'"
    if ".." in value:
        return "a user id must not hold '..'"
    if not USER_ID_PATTERN.fullmatch(value):
        return "a user id holds only letters, digits and _ . @ -, and starts with a letter or digit"
    return None


def validate_user_id(value: Any) -> str:
    """`value` when it is a valid user id.

    Raises:
        ValueError: naming the id (shortened) and the problem.
    """
    problem = user_id_problem(value)
    if problem is not None:
        shown = value if not isinstance(value, str) or len(value) <= 40 else value[:37] + "..."
        raise ValueError(f"invalid user id {shown!r}: {problem}")
    return value


def adapter_name(user_id: str) -> str:
    """The peft adapter name of a user: ``u_`` + the first 12 hex digits of the id's SHA-1."""
    return "u_" + hashlib.sha1(user_id.encode("utf-8")).hexdigest()[:12]


def user_seed(base_seed: int, user_id: str) -> int:
    """The seed of a user's own torch RNG: the run's seed mixed with the id."""
    return (int(base_seed) + int(hashlib.sha1(user_id.encode("utf-8")).hexdigest()[:15], 16)) % (2**63)


def _cuda() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def get_rng() -> dict[str, torch.Tensor]:
    """The torch random state a user's turns draw from (CPU; and the current CUDA device's when in use)."""
    state = {"cpu": torch.get_rng_state()}
    if _cuda():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng(state: dict[str, torch.Tensor]) -> None:
    """Install a `get_rng` state (a CUDA part without CUDA in use is ignored)."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and _cuda():
        torch.cuda.set_rng_state(state["cuda"])


def new_rng(seed: int) -> dict[str, torch.Tensor]:
    """A fresh `get_rng` state seeded with `seed`."""
    state = {"cpu": torch.Generator().manual_seed(seed).get_state()}
    if _cuda():
        state["cuda"] = torch.Generator(device=torch.device("cuda", torch.cuda.current_device())).manual_seed(seed).get_state()
    return state


# ----------------------------------------------------------------------------- the registry
@dataclass
class UserState:
    """One user's learned state. The tensors' holders (optimizer, memory, replay_queue, rng) are
    None while the user is evicted; `path` is then the state file."""

    user_id: str
    adapter: str
    turns: int = 0
    locality_position: int = 0
    changed: bool = True
    """Learned since its adapter was last published (`UserRegistry.publish_changed`)."""
    path: str | None = None
    optimizer: torch.optim.Optimizer | None = None
    memory: FactMemory | None = None
    replay_queue: list[tuple[str, str]] | None = None
    rng: dict[str, torch.Tensor] | None = None
    """The user's random state: {"cpu": ..., "cuda": ... (the current device's, when CUDA is in use)}."""

    @property
    def loaded(self) -> bool:
        return self.optimizer is not None


class UserRegistry:
    """Every user's adapter, optimizer, memory and counters; at most `max_loaded` in memory (LRU).

    Args:
        module: the `OnlineLM` (its `model`, `optim`, `memory`, `replay_queue`, `locality` are
            switched to the active user's by `activate`).
        max_loaded: users whose state is kept in memory; the least recently active goes to disk.
    """

    def __init__(self, module: Any, max_loaded: int) -> None:
        if max_loaded < 1:
            raise ValueError(f"per_user_max_loaded must be >= 1, got {max_loaded!r}")
        self.module, self.max_loaded = module, max_loaded
        self.users: dict[str, UserState] = {}
        self.loaded: OrderedDict[str, None] = OrderedDict()  # least recently active first
        self.active: str | None = None
        self.root: Path | None = None
        """Where evicted users' state goes (``<log_dir>/users``; set by the module at setup)."""
        self.swaps = 0
        self.base_seed = torch.initial_seed()
        self._saved_refs: list[set[str]] = [set(), set()]  # state files the last two checkpoints name
        self._wrapped: dict[str, Any] = {}  # user id → its optimizer as a LightningOptimizer
        self.template = {n: p.detach().clone() for n, p in self._params(TEMPLATE).items()}
        self.template_memory = module.memory.state_dict()
        """A new user's memory: the facts of the adapter the run continues from (`--model.adapter`), else none."""

    # ----------------------------------------------------------------- what the module calls
    def template_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The template adapter's named parameters (the module's own optimizer holds them; never stepped)."""
        return list(self._params(TEMPLATE).items())

    @property
    def model(self):
        return self.module.model

    @property
    def state(self) -> UserState:
        """The active user's state."""
        assert self.active is not None, "no active user"
        return self.users[self.active]

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The active user's optimizer."""
        return self.state.optimizer

    def lightning_optimizer(self, trainer: Any) -> Any:
        """The active user's optimizer as Lightning steps it (precision plugin; ``global_step`` counts
        its steps like those of the trainer's own optimizer); the plain optimizer without a trainer."""
        opt = self.optimizer
        if trainer is None or not trainer.strategy._lightning_optimizers:
            return opt
        from lightning.pytorch.core.optimizer import LightningOptimizer

        wrapped = self._wrapped.get(self.active)
        if wrapped is None or wrapped.optimizer is not opt:  # one wrapper per loaded user (it makes a class)
            wrapped = self._wrapped[self.active] = LightningOptimizer._to_lightning_optimizer(opt, trainer.strategy)
        LightningOptimizer._to_lightning_optimizer(wrapped, trainer.strategy)  # this fit's strategy (olm.api fits again)
        ref = trainer.strategy._lightning_optimizers[0]  # its hooks count the step (manual optimization loop)
        wrapped._on_before_step, wrapped._on_after_step = ref._on_before_step, ref._on_after_step
        return wrapped

    def activate(self, user_id: str | None) -> UserState:
        """Make `user_id` (None: `DEFAULT_USER`) the active user: its adapter, optimizer, memory,
        replay queue, locality position and RNG become the module's; loaded from disk or created
        as needed, evicting the least recently active user beyond `max_loaded`."""
        uid = validate_user_id(DEFAULT_USER if user_id is None else user_id)
        if uid == self.active:
            self.loaded.move_to_end(uid)
            return self.state
        self._deactivate()
        state = self.users.get(uid)
        if state is None:
            state = self.users[uid] = UserState(uid, adapter_name(uid))
        if not state.loaded:
            while len(self.loaded) >= self.max_loaded:
                self.evict(next(iter(self.loaded)))
            self._load(state)
        self.loaded.move_to_end(uid)
        self.model.set_adapter(state.adapter)
        m = self.module
        m.memory, m.replay_queue, m.locality.position = state.memory, state.replay_queue, state.locality_position
        set_rng(state.rng)
        self.active = uid
        return state

    def trained(self) -> None:
        """Count a turn trained for the active user."""
        self.state.turns += 1

    def changed(self) -> None:
        """The active user's adapter changed (an optimizer step)."""
        if self.active is not None:
            self.state.changed = True

    def evict(self, user_id: str) -> Path:
        """Write a loaded user's state to a new state file and free its adapter; returns the file."""
        if user_id == self.active:
            self._deactivate()
        state = self.users[user_id]
        if self.root is None:
            raise RuntimeError("UserRegistry.root is not set: the module sets it at setup")
        self.swaps += 1
        path = (self.root / state.user_id / f"state-{self.swaps:06d}.pt").resolve()
        payload = self._payload(state)
        atomic_write(path, lambda fh: torch.save(payload, fh))
        old = state.path
        self.model.delete_adapter(state.adapter)
        state.optimizer = state.memory = state.replay_queue = state.rng = None
        self._wrapped.pop(user_id, None)
        state.path = str(path)
        del self.loaded[user_id]
        if old is not None and old not in self._protected():
            Path(old).unlink(missing_ok=True)
        log.debug("user %s evicted to %s", user_id, path)
        return path

    def publish_changed(self, write: Callable[[UserState, FactMemory], Any]) -> list[str]:
        """Call ``write(state, memory)`` with the user's adapter present in the model (the active
        one is left as it is) for every user changed since its last publication, loaded or
        evicted (an evicted one's adapter is added for the call and removed after); marks them
        published. Returns the user ids written."""
        done = []
        for state in list(self.users.values()):
            if not state.changed:
                continue
            with self._present(state) as memory:
                write(state, memory)
            state.changed = False
            done.append(state.user_id)
        return done

    def adapter_tensors(self, user_id: str) -> dict[str, torch.Tensor]:
        """A user's LoRA tensors (copies, named as the template's), loaded or evicted."""
        state = self.users[user_id]
        if state.loaded:
            return {self._key(n, state.adapter): p.detach().clone() for n, p in self._params(state.adapter).items()}
        return dict(torch.load(state.path, map_location="cpu", weights_only=True)["adapter"])

    def memory_state(self, user_id: str) -> dict[str, Any]:
        """A user's fact memory as a `FactMemory.state_dict`, loaded or evicted."""
        state = self.users[user_id]
        if state.loaded:
            return state.memory.state_dict()
        return torch.load(state.path, map_location="cpu", weights_only=True)["memory"]

    @contextmanager
    def viewing(self, user_id: str) -> Iterator[FactMemory]:
        """The model answers with `user_id`'s adapter inside the block (yields its memory); nothing
        else changes: no activation, no LRU move, no eviction, no RNG swap (for reports and probes)."""
        state = self.users[user_id]
        with self._present(state) as memory:
            self.model.set_adapter(state.adapter, inference_mode=True)
            try:
                yield memory
            finally:
                if self.active is not None:
                    self.model.set_adapter(self.state.adapter)
                else:
                    self.model.set_adapter(TEMPLATE, inference_mode=True)

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The registry as plain types and tensors: users (counters, state files, LRU order) and the
        loaded users' optimizer states, memories, replay queues and RNG states (their LoRA weights
        are in the checkpoint's state_dict). The state files it names are kept by later evictions."""
        users = []
        for state in self.users.values():
            entry = {"user_id": state.user_id, "adapter": state.adapter, "turns": state.turns,
                     "locality_position": state.locality_position, "changed": state.changed, "path": state.path,
                     "loaded": state.loaded}  # fmt: skip
            if state.loaded:
                entry.update(self._live(state))
            users.append(entry)
        refs = {s.path for s in self.users.values() if s.path is not None and not s.loaded}
        self._remember_refs(refs)
        return {"version": STATE_VERSION, "users": users, "order": list(self.loaded), "active": self.active,
                "swaps": self.swaps, "base_seed": self.base_seed}  # fmt: skip

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore a `state_dict` before the checkpoint's weights are loaded: the loaded users'
        adapters are created (Lightning then loads their weights), evicted users are checked to
        have their state file.

        Raises:
            ResumeError: an evicted user's state file is gone.
        """
        for uid in list(self.loaded):
            self._deactivate()
            self.model.delete_adapter(self.users[uid].adapter)
        self.users, self.loaded, self.active = {}, OrderedDict(), None
        self.swaps, self.base_seed = int(saved["swaps"]), int(saved["base_seed"])
        missing = []
        for entry in saved["users"]:
            state = UserState(validate_user_id(entry["user_id"]), entry["adapter"], int(entry["turns"]),
                              int(entry["locality_position"]), bool(entry["changed"]), entry["path"])  # fmt: skip
            self.users[state.user_id] = state
            if entry["loaded"]:
                self._add_adapter(state.adapter)
                self._install_live(state, entry)
            elif state.path is None or not Path(state.path).is_file():
                missing.append(f"{state.user_id} ({state.path})")
        if missing:
            raise ResumeError(f"the checkpoint's evicted users' state files are gone: {', '.join(missing)}")
        for uid in saved["order"]:
            self.loaded[uid] = None
        self._remember_refs({s.path for s in self.users.values() if s.path is not None and not s.loaded})
        if saved.get("active") is not None:
            self.activate(saved["active"])

    # ----------------------------------------------------------------- helpers
    def _params(self, adapter: str) -> dict[str, torch.nn.Parameter]:
        mark = f".{adapter}."
        return {n: p for n, p in self.model.named_parameters() if "lora_" in n and mark in n}

    def _key(self, name: str, adapter: str) -> str:
        return name.replace(f".{adapter}.", f".{TEMPLATE}.")

    def _add_adapter(self, adapter: str) -> dict[str, torch.nn.Parameter]:
        with torch.random.fork_rng(devices=[]):  # peft's init draws: never from a user's stream
            self.model.add_adapter(adapter, self.model.peft_config[TEMPLATE])
        params = self._params(adapter)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.template[self._key(name, adapter)])
        return params

    def _new_optimizer(self, params: dict[str, torch.nn.Parameter]) -> torch.optim.Optimizer:
        return adamw(params.items(), self.module.optim)

    def _apply_settings(self, opt: torch.optim.Optimizer) -> None:
        o = self.module.optim  # this run's settings win over a saved state's (as for the module's optimizer)
        for group in opt.param_groups:
            lr = group_lr(group, o)
            group.update(lr=lr, base_lr=lr, weight_decay=o.weight_decay, betas=tuple(o.betas), eps=o.eps)

    def _load(self, state: UserState) -> None:
        """Create a new user's bundle, or read an evicted one's state file."""
        params = self._add_adapter(state.adapter)
        if state.path is None:
            state.optimizer = self._new_optimizer(params)
            state.memory, state.replay_queue = FactMemory(self.module.memory_config), []
            state.memory.load_state_dict(self.template_memory)
            state.rng = new_rng(user_seed(self.base_seed, state.user_id))
        else:
            saved = torch.load(state.path, map_location="cpu", weights_only=True)
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(saved["adapter"][self._key(name, state.adapter)])
            self._install_live(state, saved)
        self.loaded[state.user_id] = None

    def _install_live(self, state: UserState, saved: dict[str, Any]) -> None:
        params = self._params(state.adapter)
        state.optimizer = self._new_optimizer(params)
        b_flags = [is_lora_b(n) for n in params]  # a state saved under another optim.lr_ratio_b: regrouped
        state.optimizer.load_state_dict(regroup_state(saved["optimizer"], b_flags, two_groups(self.module.optim)))
        self._apply_settings(state.optimizer)
        state.memory = FactMemory(self.module.memory_config)
        state.memory.load_state_dict(saved["memory"])
        state.replay_queue = [tuple(key) for key in saved["replay_queue"]]
        state.rng = {k: v.clone() for k, v in saved["rng"].items()}

    def _live(self, state: UserState) -> dict[str, Any]:
        active = state.user_id == self.active
        return {
            "optimizer": state.optimizer.state_dict(),
            "memory": state.memory.state_dict(),
            "replay_queue": [list(k) for k in state.replay_queue],
            "rng": get_rng() if active else {k: v.clone() for k, v in state.rng.items()},
            "locality_position": self.module.locality.position if active else state.locality_position,
        }

    def _payload(self, state: UserState) -> dict[str, Any]:
        adapter = {self._key(n, state.adapter): p.detach().clone() for n, p in self._params(state.adapter).items()}
        return {"version": STATE_VERSION, "user_id": state.user_id, "turns": state.turns, "adapter": adapter,
                **self._live(state)}  # fmt: skip

    def _deactivate(self) -> None:
        """Keep the active user's moving parts (RNG, locality position) in its state; none active."""
        if self.active is None:
            return
        state = self.users[self.active]
        state.rng, state.locality_position = get_rng(), self.module.locality.position
        self.model.set_adapter(TEMPLATE, inference_mode=True)  # the template is never trained
        self.active = None

    @contextmanager
    def _present(self, state: UserState) -> Iterator[FactMemory]:
        if state.loaded:
            yield state.memory
            return
        saved = torch.load(state.path, map_location="cpu", weights_only=True)
        params = self._add_adapter(state.adapter)
        try:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(saved["adapter"][self._key(name, state.adapter)])
            memory = FactMemory(self.module.memory_config)
            memory.load_state_dict(saved["memory"])
            yield memory
        finally:
            self.model.delete_adapter(state.adapter)
            if self.active is not None:
                self.model.set_adapter(self.state.adapter)

    def _remember_refs(self, refs: set[str]) -> None:
        """A checkpoint names these state files: keep them and those of the save before; remove
        older files no longer named (nor a user's current one)."""
        dropped = self._saved_refs[0] - refs - self._saved_refs[1]
        self._saved_refs = [self._saved_refs[1], set(refs)]
        current = {s.path for s in self.users.values()}
        for path in dropped - current:
            Path(path).unlink(missing_ok=True)

    def _protected(self) -> set[str]:
        return self._saved_refs[0] | self._saved_refs[1]
