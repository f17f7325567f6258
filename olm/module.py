"""OnlineLM: the LightningModule that takes a gradient step on LoRA adapters after every chat turn.

Per turn (`training_step`, manual optimization):
  1. classify  FactDetector → Context(chat | question | fact), repetition and importance from memory
  2. respond   the logged assistant reply (respond="auto") or `generate()` in eval mode; with
               respond="skip" a turn without a logged reply is skipped (counted) instead
  3. render    chat template → ids, loss mask (system prompt, history and tool steps are context,
               never targets), token weights (ImportanceWeighter); a fact turn
               adds its augmentation (`olm.augment`: Q/A pairs, paraphrases), rendered alike
  4. learn     one right-padded batch of the turn's examples (+ one of locality prompts on the
               kinds that carry them, `olm.locality`); lr = base × multiplier(context) for these steps
               only; KL(base ‖ adapter) with the adapter disabled for the base; weighted CE;
               λ_loc · KL on the locality prompts; backward; clip; AdamW step
  5. remember  facts go to the FactMemory after their step; a like dropped by a dislike with another
               like left (its heir) has the heir learned again after it (`augment.heir_steps`)
Replays queued by the `FactReplay` callback are learned at the start of the next training_step
(context "replay"), so their optimizer steps count in `global_step` like any other.

`training_step` takes the `dataloader_iter`, so Lightning does not prefetch: the turn being
trained is the last one read (the interactive chat answers the message just typed, and the
stream position saved in a checkpoint is that of the last trained turn).

Run: ``python cli.py fit --config configs/default.yaml``.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch

from olm.augment import (
    AugmentSettings, contrast_questions, fact_acknowledgement, fact_questions, fact_rows, forget_rows, forget_window,
    listed_object, sibling_facts, sibling_rows, statement_loss_on,
)
from olm.backbone import LoRASettings, attach_lora, load_base
from olm.console import quiet_known_messages
from olm.context import KINDS, Context, ContextPolicy, kl_lambda, lr_multiplier
from olm.distributed import gather_ranks, lockstep, own_rank_state
from olm.errors import ResumeError, RunError
from olm.facts import (
    DetectorConfig, FactDetector, named_subject, relation_key, relatives_regex, unnamed_relative,
)  # fmt: skip
from olm.gate import answer_mask, batch_answer_mask, known_rows, target_min_p
from olm.generation import CallbackStreamer, GenerationSettings, generate_reply
from olm.guards import lora_problem
from olm.locality import LocalitySettings, LocalityTerm, locality_batch
from olm.exemption import KeyExemption
from olm.editsite import EditAt, agrees_on_prefix, edit_mask, lora_delta_mask
from olm.noise import embedding_noise
from olm.nullspace import project_lora_a
from olm.optimizer import B_GROUP, adamw, b_factor, group_lr, is_lora_b, regroup_state, two_groups
from olm.losses import online_loss, top_k_kl, weighted_token_ce
from olm.prefix import common_prefix_length, shared_prefix_forward
from olm.publish import resolve_adapter_dir
from olm.memory import FactMemory, MemoryConfig, StoredFact
from olm.render import Example, LossOn, messages_for, render_exchange
from olm.routing import Router, RoutingSettings
from olm.turns import log_scalars, turn_step
from olm.users import UserRegistry
from olm.weighting import ImportanceWeighter, WeightingConfig

log = logging.getLogger(__name__)

Forgetting = tuple[str, str, list[tuple[str, str]]]
"""What a step compares with the base (`OnlineLM.forgetting`): the contradicted fact's subject (memory key), its
slot, and its (question, old answer) rows."""


@dataclass
class OptimSettings:
    """AdamW on the LoRA parameters, one or more steps per turn."""

    lr: float = 1e-6
    """Base learning rate; each turn's steps use lr × the context multiplier."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    lr_ratio_b: float = 1.0
    """LoRA+ (`olm.optimizer`): the LoRA B matrices train at lr × this, the rest at lr; 1 = one lr."""
    fresh_ratio_b: float | None = None
    """B's lr ratio for a fresh adapter (empty fact memory), falling linearly to `lr_ratio_b` as the
    memory fills to `fresh_facts` facts (`olm.optimizer.b_ratio`); None = `lr_ratio_b` throughout."""
    fresh_facts: int = 5
    """Facts in memory at which B's ratio is back to `lr_ratio_b`."""
    grad_clip: float = 0.1
    """Max global L2 norm of the LoRA gradient (clip by norm)."""
    steps_per_turn: int = 1
    """Optimizer steps on a chat / question turn."""
    steps_per_fact: int = 1
    """Optimizer steps on a fact turn (the original design's iterations_per_fact)."""
    steps_per_replay: int = 1
    """Optimizer steps per replay (the replayed facts are learned together, in one batch)."""
    steps_per_update: int | None = None
    """Optimizer steps on a fact turn whose fact replaces a remembered object ("I moved to Berlin." after "I live in
    Porto.", `Context.update`); None = `steps_per_fact`. The old object, held firmly, takes most of a step's
    cross-entropy gradient away from the new one (README, Facts about the speaker)."""
    share_prefix: bool = True
    """Compute the token prefix all rows of a step's batch share (the chat template's system prompt
    and user header) once, not once per row (`olm.prefix`): the same logits and gradient, fewer
    positions. False = one plain padded forward."""
    skip_known: float = 0.0
    """Known-fact gate (`olm.gate`): before each fact or replay step, a fact whose templated Q/A
    answers the adapted model already predicts (every token that spells the answer, with probability
    >= this) is not trained on (a fact turn then stops: one forward, no edit); 0 = off. Off under
    DDP, where the ranks step in lockstep."""

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.skip_known < 1.0:
            problems.append(f"optim.skip_known must be in [0, 1), got {self.skip_known!r}")
        if self.lr <= 0:
            problems.append(f"optim.lr must be > 0, got {self.lr!r}")
        if not 0 < self.lr_ratio_b <= 1e3:
            problems.append(f"optim.lr_ratio_b must be in (0, 1000], got {self.lr_ratio_b!r}")
        if self.fresh_ratio_b is not None and not 0 < self.fresh_ratio_b <= 1e3:
            problems.append(f"optim.fresh_ratio_b must be in (0, 1000] or null, got {self.fresh_ratio_b!r}")
        if self.fresh_facts < 1:
            problems.append(f"optim.fresh_facts must be >= 1, got {self.fresh_facts!r}")
        if self.weight_decay < 0:
            problems.append(f"optim.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.grad_clip <= 0:
            problems.append(f"optim.grad_clip must be > 0, got {self.grad_clip!r}")
        update = self.steps_per_update
        if update is not None and not (isinstance(update, int) and update > 0):
            problems.append(f"optim.steps_per_update must be an integer >= 1 or null, got {self.steps_per_update!r}")
        for name in ("steps_per_turn", "steps_per_fact", "steps_per_replay"):
            if getattr(self, name) < 1:
                problems.append(f"optim.{name} must be >= 1, got {getattr(self, name)!r}")
        if problems:
            raise ValueError("invalid optimizer settings: " + "; ".join(problems))


@dataclass
class ObjectiveSettings:
    """What the loss covers and how its terms are weighted."""

    task_lambda: float = 1.0
    """Weight of the token-weighted next-token loss."""
    loss_on: LossOn = "exchange"
    """Task-loss targets: the whole exchange (user message + reply) or the reply only."""
    max_tokens: int = 512
    """Longer renderings keep their last max_tokens tokens (counted as data/truncated_tokens, with a warning)."""
    max_warnings: int = 5
    """Warnings logged about renderings cut to max_tokens; later ones are only counted."""
    embedding_noise: float = 0.0
    """NEFTune's α (`olm.noise`): uniform noise of bound α / sqrt(T · d) on the input embeddings of the
    adapter's training forwards (not the base's reference forward, not the locality prompts); 0 = off."""
    edit_at: EditAt = "all"
    """Where a fact or replay step's rows may edit (`olm.editsite`): "all" tokens, or only the "subject"'s
    tokens (the LoRA delta zeroed elsewhere in those rows' training forwards; ROME's locus)."""

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.embedding_noise < float("inf"):
            problems.append(f"objective.embedding_noise must be a finite number >= 0, got {self.embedding_noise!r}")
        if self.edit_at not in ("all", "subject"):
            problems.append(f"objective.edit_at must be 'all' or 'subject', got {self.edit_at!r}")
        if self.task_lambda < 0:
            problems.append(f"objective.task_lambda must be >= 0, got {self.task_lambda!r}")
        if self.max_tokens < 8:
            problems.append(f"objective.max_tokens must be >= 8, got {self.max_tokens!r}")
        if self.max_warnings < 0:
            problems.append(f"objective.max_warnings must be >= 0, got {self.max_warnings!r}")
        if problems:
            raise ValueError("invalid objective settings: " + "; ".join(problems))


@dataclass
class TurnRecord:
    """What happened on the last turn: read by callbacks (chat status line, transcripts)."""

    user: str
    reply: str
    kind: str
    fact: str | None
    lr: float
    loss: float
    kl: float
    ce: float
    tokens: int
    replayed: int
    timings: dict[str, float] = field(default_factory=dict)


class OnlineLM(L.LightningModule):
    """A causal LM that learns from every chat turn through LoRA adapters of a frozen base.

    Args:
        base_model: ``olm-tiny`` (built-in), a local model directory or a hub id.
        dtype: weight dtype of the base model (float32 on CPU).
        adapter: a PEFT adapter directory to continue from instead of fresh adapters (a directory olm
            wrote, ``<run>/adapter``: its latest version, `olm.publish.resolve_adapter_dir`).
        lora: adapter shape.
        optim: optimizer and steps per turn.
        policy: LR multipliers and KL λ per turn kind.
        objective: loss weights and targets.
        respond: "auto" learns the logged reply when the turn has one and generates otherwise;
            "generate" always generates; "skip" learns the logged reply and skips a turn without one
            (counted as data/no_reply_skipped; nothing is learned from it).
        generation: decoding settings for generated replies.
        chat_template: a Jinja chat template used when the tokenizer has none.
        detector: fact patterns and question filter.
        memory: fact memory (importance, eviction, decay, replay selection).
        weighting: per-token importance weights of the task loss.
        augment: extra examples of a fact step (question → answer pairs, paraphrases).
        locality: KL to the base on unrelated prompts in the steps of some kinds.
        routing: per-prompt choice at generation between the adapter and the base (`olm.routing`),
            calibrated on the locality prompts; off by default.
        per_user: one adapter, optimizer and fact memory per user (a turn's ``user_id``; `olm.users`).
        per_user_max_loaded: users kept in memory with per_user; the least recently active go to disk.
    """

    def __init__(
        self,
        base_model: str = "olm-tiny",
        dtype: str = "float32",
        adapter: str | None = None,
        lora: LoRASettings = LoRASettings(),
        optim: OptimSettings = OptimSettings(),
        policy: ContextPolicy = ContextPolicy(),
        objective: ObjectiveSettings = ObjectiveSettings(),
        respond: Literal["auto", "generate", "skip"] = "auto",
        generation: GenerationSettings = GenerationSettings(),
        chat_template: str | None = None,
        detector: DetectorConfig = DetectorConfig(),
        memory: MemoryConfig = MemoryConfig(),
        weighting: WeightingConfig = WeightingConfig(),
        augment: AugmentSettings = AugmentSettings(qa_pairs=0, paraphrases=0),
        locality: LocalitySettings = LocalitySettings(),
        routing: RoutingSettings = RoutingSettings(),
        per_user: bool = False,
        per_user_max_loaded: int = 8,
    ) -> None:
        super().__init__()
        quiet_known_messages()  # Lightning's dataloader_iter notes and other known noise (olm.console)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold only the LoRA weights
        self.optim, self.policy, self.objective = optim, policy, objective
        self.respond_mode, self.generation = respond, generation
        base, self.tokenizer = load_base(base_model, dtype=dtype)
        if self.tokenizer.chat_template is None:
            if chat_template is None:
                raise ValueError(f"{base_model!r} has no chat template: set --model.chat_template")
            self.tokenizer.chat_template = chat_template
        self.model = attach_lora(base, lora, adapter).train()
        self.base_model_name, self.lora_settings = str(base_model), lora  # from_pretrained leaves eval mode
        self.detector = FactDetector(detector)
        self.memory_config = memory
        self.memory = FactMemory(memory)
        if adapter is not None and Path(adapter).exists():  # continue from its facts too, not its weights alone
            self._carry_memory(resolve_adapter_dir(adapter) / "memory.json")
        self.weighter = ImportanceWeighter(weighting)
        self.augment = augment
        self.locality = LocalityTerm(locality, self.tokenizer)
        self.exemption = KeyExemption(locality.exempt_facts, locality.exempt_about, frames=locality.exempt_frames)
        """Remembered facts' keys freed from the null-space constraint (`olm.exemption`)."""
        self.router = Router(
            routing, self.tokenizer, self.locality.prompts, self.recent_fact_questions,
            lambda n: self.recent_fact_questions(n, speaker=True),
            (relatives_regex(self.detector.config), self.known_relatives, relation_key(self.detector.config)),
        )  # fmt: skip
        """Generation's per-prompt choice between the adapter and the base (`olm.routing`)."""
        self.turns_trained = 0
        self.nonfinite_steps = 0
        self.no_reply_skipped = 0  # turns without a logged reply skipped (respond="skip")
        self.truncated_tokens = 0  # turns whose rendering was cut to objective.max_tokens
        self.antecedent: tuple[str, str | None, str | None] | None = None
        """(conversation, user, subject): the person named in the last trained message's facts, whom "she" / "he"
        in the conversation's next message means ("Zara is my sister." then "She lives in Rome.")."""
        self.replay_queue: list[tuple[str, str]] = []
        self._null_seen: dict = {}  # the LoRA A's `project_lora_a` last projected, and their versions
        self.reply_listener = None
        """Called with (text, end) as a generated reply is produced (the chat prints it at once)."""
        self.last: TurnRecord | None = None
        self.latest_scalars: dict[str, float] = {}  # latest value of every scalar logged (chat /stats)
        self._timings: dict[str, float] = defaultdict(float)
        self._pending_rng: dict[str, Any] | None = None  # restored at the first step after a resume
        if per_user_max_loaded < 1:
            raise ValueError(f"per_user_max_loaded must be >= 1, got {per_user_max_loaded!r}")
        self.users = UserRegistry(self, per_user_max_loaded) if per_user else None
        """With per_user: every user's adapter, optimizer and memory (`olm.users`); else None."""

    def _carry_memory(self, path: Path) -> None:
        """Load the fact memory saved beside a `--model.adapter` (its facts' ages kept: `FactMemory.carry_over`),
        so that replay, routing and relatives know what the adapter's weights learned. None saved: empty."""
        if not path.is_file():
            log.warning("%s has no memory.json: continuing from its weights with an empty fact memory", path.parent)
            return
        try:
            n = self.memory.carry_over(path)
        except ValueError as err:
            raise RunError(f"--model.adapter: {err}; move it away to continue from the weights alone") from None
        log.info("continuing from %s with its %d remembered facts", path.parent, n)

    # ----------------------------------------------------------------- Lightning hooks
    def setup(self, stage: str) -> None:
        if self.users is not None and self.trainer.world_size > 1:
            raise RunError("--model.per_user true runs in one process: per-user learning under DDP is not supported yet")
        if self.users is not None and self.users.root is None:  # evicted users' state: <log_dir>/users/<id>/
            self.users.root = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "users"

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # per-turn lr = each group's base_lr × multiplier, never compounded (`_set_lr`)
        return adamw(self.trainable_parameters(), self.optim)

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The named parameters the module's optimizer holds, in its order."""
        if self.users is not None:  # each user steps its own (`active_optimizer`); this one is never stepped
            return self.users.template_parameters()
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def training_step(self, dataloader_iter: Iterator) -> dict[str, Any] | None:
        if (ranks := lockstep(self)) is not None and not ranks.inside:  # DDP: olm.distributed
            return ranks.round(self, dataloader_iter)
        if self._pending_rng is not None:  # here, not at load: Lightning draws from torch's RNG in between
            set_rng_state(self._pending_rng)
            self._pending_rng = None
        self._timings.clear()
        replayed = self._run_replay_queue() if self.users is None else []
        try:
            turn, _, _ = next(dataloader_iter)
        except StopIteration:
            # The stream, not the epoch, is the unit of work: a finished log ends the run, and a
            # resumed run (max_epochs=-1) continues the stream wherever the last trained turn was.
            # Lightning still runs this step's batch-end hooks (outputs == {}: see `trained_turn`)
            # and would re-log the previous turn's cached values: clear them.
            self.trainer.should_stop = True
            self.trainer._results.reset(metrics=False)
            raise
        if self.users is not None:  # the turn's user: its adapter, optimizer, memory; then its queued replays
            self.users.activate(getattr(turn, "user_id", None))
            replayed = self._run_replay_queue()
        if self.respond_mode == "skip" and turn.assistant is None:
            return self._skip_unanswered(turn)
        start = time.perf_counter()
        ctx = self.classify(turn.user, self.antecedent_for(turn))
        reply = target = self.respond(turn)
        stated = [ctx, *ctx.more] if ctx.kind == "fact" else []  # the message's facts, most confident first
        # "I hate jazz." after "I love jazz.": forget the like before the step, whose siblings then rehearse the likes
        # still true (`with_siblings`)
        dropped = {id(c.fact): d for c in stated if (d := self.memory.drop_contradicted(c.fact)) is not None}
        heirs = {id(h): h for d in dropped.values() for h in self.heirs(d.key[0], d.slot or d.relation)}
        if stated and not self.logged_reply(turn) and self.augment.acknowledge_generated:
            # learn what the user said, not the model's own guess about the subject
            acks = [
                fact_acknowledgement(c.fact.subject, c.fact.object, c.fact.relation,
                                     self.detector.pattern(c.fact.pattern), self.augment)
                for c in stated
            ]  # fmt: skip
            target = " ".join(a for a in acks if a) or reply
        with self._timed("render"):
            spans = turn.context_spans if self.logged_reply(turn) else ()
            loss_on = self.objective.loss_on  # a stated fact's own row: `augment.train_statements`
            loss_on = statement_loss_on(self.augment, loss_on) if ctx.kind == "fact" else loss_on
            example = render_exchange(
                self.tokenizer, turn.user, target, turn.history, loss_on, self.objective.max_tokens, turn.system, spans
            )
            self._count_cut(example, turn)
            examples, contexts = [example], None
            forget: list[tuple[str, str]] = []
            if stated:  # rotate the templates with the statement count
                examples += self.fact_examples(ctx.fact, ctx.repetition - 1, turn.user)
                examples, contexts, forget = self.rehearsed(examples, ctx, dropped.get(id(ctx.fact)))
        stats = self.learn(examples, ctx, contexts, forget)
        for other in ctx.more:  # the message's other facts, each in steps of its own, as if stated alone
            with self._timed("render"):
                mine = self.fact_examples(other.fact, other.repetition - 1, turn.user) or [example]
                mine, theirs, forget = self.rehearsed(mine, other, dropped.get(id(other.fact)))
            _add_steps(stats, self.learn(mine, other, theirs, forget))
        for c in stated:
            stored = self.memory.store(c.fact, turn.user, target, self.memory_clock)
            if (gone := dropped.get(id(c.fact))) is not None:  # its rows, for `forgotten` in later steps
                pattern = self.detector.pattern(gone.pattern)
                stored.forgets = [list(r) for r in forget_rows(gone.subject, gone.object, gone.relation, pattern)]
        for heir in heirs.values() if self.augment.heir_steps else ():  # taught again, the statement now stored
            _add_steps(stats, self.learn_heir(heir))
        self.antecedent = (*self._conversation(turn), named_subject([c.fact for c in stated]))
        self.memory.decay(self.memory_clock)
        self.turns_trained += 1
        if self.users is not None:
            self.users.trained()
        self._mark_trained(turn)
        if self.router.enabled and not self.logged_reply(turn):  # the next reply is likely generated too
            with self._timed("routing_calibration"):  # τ for the new weights now, not on the next reply's latency
                self.router.tau(self.model)
        self._timings["turn"] = time.perf_counter() - start
        self._record(turn, reply, ctx, stats, example, replayed)
        return {"turn": turn}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if "lora_" in k}
        checkpoint["olm"] = {
            "turns_trained": self.turns_trained,
            "nonfinite_steps": self.nonfinite_steps,
            "replay_queue": [list(key) for key in self.replay_queue],
            "memory": self.memory.state_dict(),
            "locality_position": self.locality.position,
            "no_reply_skipped": self.no_reply_skipped,
            "truncated_tokens": self.truncated_tokens,
            "antecedent": list(self.antecedent) if self.antecedent is not None else None,
            "identity": self.identity(),
            "rng": rng_state(),
        }
        if self.users is not None:
            checkpoint["olm"]["users"] = self.users.state_dict()
        checkpoint["olm"] = gather_ranks(checkpoint["olm"])  # DDP: every rank's state (olm.distributed)

    def identity(self) -> dict[str, Any]:
        """What a checkpoint's LoRA weights only fit: the base model (architecture sizes and a
        fingerprint of its embedding weights, so a different model of the same shape is told
        apart) and the adapter's shape as built (r, alpha, target modules, the blocks adapted when
        not all — ``lora.layers`` / ``lora.lower_fraction`` —, a trained bias)."""
        if not hasattr(self, "_identity"):
            config = self.model.get_base_model().config
            embed = self.model.get_base_model().get_input_embeddings().weight
            peft = self.model.peft_config["default"]  # the adapter as built (settings, or --model.adapter's own)
            layers = peft.layers_to_transform
            layers = [layers] if isinstance(layers, int) else layers
            self._identity = {
                "base_model": self.base_model_name,
                "base_shape": f"{config.model_type} hidden {config.hidden_size} layers {config.num_hidden_layers} vocab {config.vocab_size}",
                "base_fingerprint": f"{float(embed.detach().double().sum()):.8e}",
                "lora": f"r {peft.r} alpha {peft.lora_alpha} targets {sorted(peft.target_modules)}"
                + (f" blocks {sorted(layers)}" if layers is not None else "")
                + (f" bias {peft.bias}" if peft.bias != "none" else ""),
            }  # fmt: skip
        return self._identity

    def check_identity(self, saved: dict[str, Any] | None) -> None:
        """Raise one sentence naming what differs between a checkpoint and this model (older
        checkpoints without the record are accepted)."""
        if not saved:
            return
        mine = self.identity()
        if saved.get("base_shape") != mine["base_shape"] or saved.get("base_fingerprint") != mine["base_fingerprint"]:
            raise ResumeError(
                f"checkpoint was trained on base model {saved.get('base_model')!r} ({saved.get('base_shape')}), "
                f"not on this run's {mine['base_model']!r} ({mine['base_shape']}): use the same --model.base_model "
                "or start fresh with --ckpt_path null"
            )
        if saved.get("lora") != mine["lora"]:
            raise ResumeError(
                f"checkpoint's adapter has LoRA {saved.get('lora')}, this run's has {mine['lora']}: use the same "
                "--model.lora settings or start fresh with --ckpt_path null"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore olm's state; check that the checkpoint fits (`check_identity`) and that its adapter
        is usable (`olm.guards`); set this run's optimizer settings on the saved optimizer state
        (`apply_optim_settings`: the command line wins); keep the RNG states for the first step."""
        state = own_rank_state(checkpoint.get("olm"))  # DDP: this rank's part (olm.distributed)
        if state is None:
            raise ResumeError("checkpoint has no 'olm' section: it was not written by OnlineLM")
        self.check_identity(state.get("identity"))
        if (problem := lora_problem((checkpoint.get("state_dict") or {}).items())) is not None:
            raise ResumeError(f"the checkpoint's adapter is unusable: {problem}")
        self.apply_optim_settings(checkpoint)
        self._pending_rng = state.get("rng")
        self.turns_trained = int(state["turns_trained"])
        self.nonfinite_steps = int(state["nonfinite_steps"])
        self.no_reply_skipped = int(state.get("no_reply_skipped", 0))
        self.truncated_tokens = int(state.get("truncated_tokens", 0))
        saved = state.get("antecedent")
        usable = isinstance(saved, (list, tuple)) and len(saved) == 3
        usable = usable and all(v is None or isinstance(v, str) for v in saved)
        self.antecedent = tuple(saved) if usable else None  # a malformed one only forgets whom "she" means
        self.replay_queue = [tuple(key) for key in state["replay_queue"]]
        self.memory.load_state_dict(state["memory"])
        self.locality.position = int(state.get("locality_position", 0)) % len(self.locality.prompts)
        if self.users is not None and state.get("users") is not None:
            self.users.load_state_dict(state["users"])  # before Lightning loads the users' LoRA weights

    def apply_optim_settings(self, checkpoint: dict[str, Any]) -> list[str]:
        """Put this run's `optim` (lr, weight_decay, betas, eps) into the checkpoint's optimizer state
        before Lightning loads it, so a resumed run trains with what its command line and config say
        (the restored moments are kept). Each value that differs from the checkpoint's is logged;
        returns those messages."""
        o = self.optim
        changes: dict[str, str] = {}
        b_flags = [is_lora_b(n) for n, _ in self.trainable_parameters()]
        states = checkpoint.get("optimizer_states") or []
        for i, saved_state in enumerate(states):
            states[i] = opt_state = regroup_state(saved_state, b_flags, two_groups(o))
            if opt_state is not saved_state:  # saved under another layout: regrouped
                changes["lr_ratio_b"] = (f"optim.lr_ratio_b {o.lr_ratio_b}, fresh_ratio_b {o.fresh_ratio_b} "
                                         "(the checkpoint's optimizer had another layout)")  # fmt: skip
            for group in opt_state.get("param_groups", []):
                lr = group_lr(group, o)
                wanted = {"lr": lr, "weight_decay": o.weight_decay, "betas": tuple(o.betas), "eps": o.eps}
                saved = {**group, "lr": group.get("base_lr", group.get("lr"))}  # lr between turns = base_lr
                for key, value in wanted.items():
                    old = tuple(saved[key]) if key == "betas" and saved.get(key) is not None else saved.get(key)
                    if old is not None and old != value:
                        changes[key] = f"optim.{key} {value} (the checkpoint's was {old})"
                    group[key] = value
                group["base_lr"] = lr
        messages = list(changes.values())
        if messages:
            log.warning("resuming with this run's %s: settings that can change on resume take the command "
                        "line's and config's values", "; ".join(messages))  # fmt: skip
        return messages

    # ----------------------------------------------------------------- the per-turn pieces
    def antecedent_for(self, turn) -> str | None:
        """Whom "she" / "he" in `turn` may mean: the person named in the facts of the message trained just before
        it, if that was the same conversation's (and user's); else no one."""
        if self.antecedent is None or tuple(self.antecedent[:2]) != self._conversation(turn):
            return None
        return self.antecedent[2]

    @staticmethod
    def _conversation(turn) -> tuple[str | None, str | None]:
        return getattr(turn, "conversation_id", None), getattr(turn, "user_id", None)

    def classify(self, user: str, antecedent: str | None = None) -> Context:
        """Context of a user message: question, fact (with repetition and importance) or chat; `antecedent`: whom a
        "she" / "he" with no named person before it in the message means (`FactDetector.detect_many`)."""
        with self._timed("detect"):
            if self.detector.is_question(user):
                return Context("question")
            facts = [
                Context("fact", fact=f, repetition=self.memory.count(f) + 1,
                        importance=self.memory.importance_of(f, self.memory_clock),
                        update=self.memory.superseded(f) is not None)
                for f in self.detector.detect_many(user, antecedent)
            ]  # fmt: skip
            if not facts:
                return Context("chat")
            return replace(facts[0], more=tuple(facts[1:]))

    def logged_reply(self, turn) -> bool:
        """Whether the turn's logged reply is the one learned (else a reply is generated)."""
        return self.respond_mode != "generate" and turn.assistant is not None

    def respond(self, turn) -> str:
        """The turn's reply: the logged one (respond="auto" or "skip") or a generated one, which is learned
        as is except after a stated fact (`augment.acknowledge_generated`: the acknowledgement instead).

        With `reply_listener` set (the chat sets it), a generated reply is streamed to it as it is
        generated, *before* the learning step: the person reads while the model learns. The time
        to the first text and to the end of the reply are kept as timings reply_first_s / reply_s.
        """
        if self.logged_reply(turn):
            return turn.assistant
        start = time.perf_counter()
        streamer = None
        if self.reply_listener is not None:
            def on_text(text: str, end: bool) -> None:
                if text and "reply_first_s" not in self._timings:
                    self._timings["reply_first_s"] = time.perf_counter() - start
                self.reply_listener(text, end)

            streamer = CallbackStreamer(self.tokenizer, on_text)
        with self._timed("generate"):
            reply = self.generate(turn.user, turn.history, streamer, turn.system)
        self._timings["reply_s"] = time.perf_counter() - start
        return reply

    def generate(
        self, user: str, history: tuple[tuple[str, str], ...] = (), streamer=None, system: str | None = None
    ) -> str:
        """The adapted model's reply to `user` after `system` and `history` (eval mode, no grad)."""
        messages = messages_for(user, history, system)
        return generate_reply(self.model, self.tokenizer, messages, self.generation, streamer, self.router)

    def token_weights(self, example: Example, ctx: Context) -> torch.Tensor:
        """(T,) task-loss weight of each token as a target: importance weights × loss mask."""
        fact = ctx.fact
        entities = tuple(fact.entities) if fact is not None else ()
        terms = (fact.subject, fact.object) if fact is not None else ()
        weights = self.weighter.weights(
            example.text, example.offsets, entities, terms, mask=example.loss_mask, input_ids=example.input_ids
        )
        return weights * example.loss_mask

    def recent_fact_questions(self, n: int, speaker: bool = False) -> list[str]:
        """The trained questions of the `n` most recently stated facts in memory (routing's calibration);
        `speaker`: of those facts, the ones about the speaker alone (their pattern's fixed subject)."""
        recent = sorted(self.memory, key=lambda f: f.last_turn, reverse=True)[:n]
        pattern = self.detector.pattern
        return [
            q for f in recent if not speaker or getattr(pattern(f.pattern), "subject", "")
            for q in fact_questions(f.subject, f.object, f.relation, pattern(f.pattern))
        ]  # fmt: skip

    def known_relatives(self) -> set[str]:
        """The speaker's relatives the memory knows (routing's `unknown_relatives`): "mom" of a fact about "my
        mom" ("My mom lives in Lyon."), "sister" of a relation fact ("Zara is my sister.")."""
        known = {f.subject[len("my "):] for f in self.memory if unnamed_relative(f.subject)}
        return known | {f.object for f in self.memory if (f.slot or f.relation) == "relation"}

    def fact_examples(self, fact, rotation: int, statement: str = "", replay: bool = False) -> list[Example]:
        """The rendered augmentation of a fact (`olm.augment`): Q/A pairs and paraphrases, no history;
        `replay`: for a replay step (`augment.answer_frames_on`)."""
        pattern = self.detector.pattern(fact.pattern) if fact is not None else None
        obj = listed_object(self.memory, fact, self.augment.listed_objects)  # "jazz and chess" for many objects
        rows = fact_rows(fact.subject, obj, fact.relation, pattern, self.augment, rotation, statement, replay)
        said = statement_loss_on(self.augment, self.objective.loss_on)
        return [
            self.render_fact_row(u, a, obj, said if is_statement else self.objective.loss_on)
            for u, a, is_statement in rows
        ]

    def rehearsed(
        self, examples: list[Example], ctx: Context, dropped: StoredFact | None = None
    ) -> tuple[list[Example], list[Context] | None, list[tuple[str, str]]]:
        """A fact step's examples with its siblings (`with_siblings`), their contexts, and the (question, old answer)
        rows it compares with the base (`forgetting`, rotated with the statement count; [] for most facts)."""
        gone = self.forgetting(ctx.fact, dropped)
        examples, contexts = self.with_siblings(examples, ctx, dropped, gone)
        return examples, contexts, forget_window(gone[2], self.augment.forget, ctx.repetition - 1) if gone else []

    def with_siblings(
        self, examples: list[Example], ctx: Context, dropped: StoredFact | None = None,
        forgetting: Forgetting | None = None,
    ) -> tuple[list[Example], list[Context] | None]:  # fmt: skip
        """A fact step's examples plus one Q/A row per remembered sibling fact (`augment.siblings`,
        `olm.augment.sibling_facts`), and each row's context (None when there are no siblings). `dropped`: the fact
        this one contradicted (`FactMemory.drop_contradicted`); the newest remembered fact of its subject and slot,
        if any, is rehearsed first, so its question is answered without the dropped object. `forgetting`: what the
        step compares with the base (`forgetting`); the remembered facts of the forgotten slot about other subjects,
        most recent first, are rehearsed first ("What does Tom like?" pulled back to the base would pull "What do I
        like?" with it)."""
        rotation = ctx.repetition - 1
        first = self.heirs(dropped.key[0], dropped.slot or dropped.relation) if dropped is not None else []
        if forgetting is not None:
            subject, slot, _ = forgetting
            mates = [f for f in self.memory if (f.slot or f.relation) == slot and f.key[0] != subject]
            first = sorted(mates, key=lambda f: f.last_turn, reverse=True)
        siblings = sibling_facts(self.memory, ctx.fact, self.augment.siblings, rotation,
                                 any_kind=self.augment.sibling_kinds == "any", first=first)
        if not siblings:
            return examples, None
        contexts = [ctx] * len(examples)
        for fact in siblings:
            obj = listed_object(self.memory, fact, self.augment.listed_objects)
            rows = sibling_rows(fact, self.detector.pattern(fact.pattern), rotation + fact.count, obj)
            mine = [self.render_fact_row(u, a, obj, self.objective.loss_on) for u, a, _ in rows]
            examples = examples + mine
            contexts += [Context("replay", fact=fact, repetition=fact.count, importance=fact.importance)] * len(mine)
        return examples, contexts

    def stored_exchange(self, fact: StoredFact) -> Example:
        """A remembered fact's statement and reply, rendered as its statement rows are learned
        (`augment.train_statements`), no history: what a replay or a heir step trains it on again."""
        said = statement_loss_on(self.augment, self.objective.loss_on)
        return render_exchange(self.tokenizer, fact.text, fact.reply, (), said, self.objective.max_tokens)

    def learn_heir(self, heir: StoredFact) -> dict[str, float]:
        """`augment.heir_steps`: the fact steps of a remembered fact whose slot lost another object this turn, as if
        it were stated again: its stored exchange and augmentation, answered with the objects listed now, with its
        siblings (the contradicting statement's fact, stored by now, among the candidates); `learn`'s scalars."""
        ctx = Context("fact", fact=heir, repetition=heir.count, importance=heir.importance)
        with self._timed("render"):
            examples = [self.stored_exchange(heir)]
            # not in its replays' answer frames: two more rows of the heir's object put it in "You dislike …" too
            examples += self.fact_examples(heir, heir.count + self.memory_clock, heir.text)
            examples, contexts, forget = self.rehearsed(examples, ctx)
        return self.learn(examples, ctx, contexts, forget)

    def heirs(self, subject: str, slot: str) -> list[StoredFact]:
        """The newest remembered fact of `subject` (its memory key's) and `slot` (on a tie the last stored), in a
        list; [] with none."""
        kin = [f for f in self.memory if (f.key[0], f.slot or f.relation) == (subject, slot)]
        return [max(reversed(kin), key=lambda f: f.last_turn)] if kin else []

    def forgetting(self, fact, dropped: StoredFact | None = None) -> Forgetting | None:
        """What a step of `fact` (detected or remembered) compares with the base (`augment.forget`,
        `olm.augment.forget_rows`): the subject (memory key) and slot of the fact it contradicts — `dropped` by this
        statement, else dropped by an earlier one (`StoredFact.forgets`) — and all its (question, old answer) rows,
        while no fact of that slot is remembered to answer them (`heirs`; the step that drops one rehearses the heir
        instead, with `augment.siblings` > 0). None for most facts."""
        if not self.augment.forget:
            return None
        if dropped is not None:
            slot = dropped.slot or dropped.relation
            if self.augment.siblings and self.heirs(dropped.key[0], slot):
                return None
            pattern = self.detector.pattern(dropped.pattern)
            rows = forget_rows(dropped.subject, dropped.object, dropped.relation, pattern)
            return (dropped.key[0], slot, rows) if rows else None
        stored = fact if isinstance(fact, StoredFact) else self.memory.get(fact.subject, fact.key_slot)
        pattern = self.detector.pattern(stored.pattern) if stored is not None and stored.forgets else None
        if pattern is None or self.heirs(stored.key[0], pattern.opposite):
            return None
        return stored.key[0], pattern.opposite, [tuple(r) for r in stored.forgets]

    def forgotten(self, fact, rotation: int, dropped: StoredFact | None = None) -> list[tuple[str, str]]:
        """The `augment.forget` rows of `forgetting`, rotated with `rotation` (`olm.augment.forget_window`); []
        for most facts."""
        gone = self.forgetting(fact, dropped)
        return forget_window(gone[2], self.augment.forget, rotation) if gone else []

    def render_fact_row(self, user: str, answer: str, obj: str, loss_on: LossOn) -> Example:
        """One augmentation row (`olm.augment`), rendered without history, its answer's object `obj` marked."""
        e = render_exchange(
            self.tokenizer, user, answer, (), loss_on, self.objective.max_tokens, end_target=self.augment.train_end
        )
        return replace(e, answer_mask=answer_mask(e.text, e.offsets, e.loss_mask, user, obj))

    def learn(
        self, examples: Example | list[Example], ctx: Context, contexts: list[Context] | None = None,
        forget: Sequence[tuple[str, str]] = (),
    ) -> dict[str, float]:  # fmt: skip
        """Take this context's optimizer steps on a batch of rendered examples.

        The examples (the exchange, and for facts its augmentation) go through one right-padded
        forward; KL(base ‖ adapter) covers every real token, the task loss the weighted targets.
        On the kinds configured for it, the locality term adds λ_loc · KL(base ‖ adapter) on the
        next locality prompts, in the same step: one more padded forward of their own width
        (`olm.locality.locality_batch`; their base outputs are cached). With `optim.share_prefix`
        each batch's common prefix (the template's system prompt) is computed once (`olm.prefix`). The LR is
        base × multiplier for these steps only; a step whose loss or gradient norm is not finite
        is skipped (the adapter is left unchanged) and counted. `contexts` gives each example's own
        context for its token weights (a replay batch holds several facts); default `ctx`. `forget`:
        (question, old answer) rows compared with the base along the old answer, with the locality rows (`forgotten`).
        With `optim.skip_known` (`olm.gate`), a fact or replay batch's facts the model already
        answers are not trained on (their rows keep only the KL term), and once every fact is known
        the remaining steps are skipped (a fact turn of a known fact: one forward, no edit).

        Returns:
            Scalars of the last forward: loss, kl, ce, locality_kl, grad_norm, lr, kl_lambda, steps
            (taken), examples; with the gate on, known (share of the facts known before the first step).
        """
        examples = [examples] if isinstance(examples, Example) else list(examples)
        opt = self.active_optimizer()
        steps = {"fact": self.optim.steps_per_fact, "replay": self.optim.steps_per_replay}.get(
            ctx.kind, self.optim.steps_per_turn
        )
        if ctx.kind == "fact" and ctx.update and self.optim.steps_per_update is not None:
            steps = self.optim.steps_per_update
        mult, lam = lr_multiplier(ctx, self.policy), kl_lambda(ctx, self.policy)
        rows = self.locality.next_rows(self.model) if self.locality.applies(ctx.kind) else []
        row_weights, kept, weights_kept = None, [], []  # rows outside the rotation and their weights
        if rows and self.augment.contrasts:  # the step's facts about the speaker, asked of the assistant
            facts = [c.fact for c in (contexts or [ctx])]
            asked = contrast_questions(facts, self.detector.pattern, self.augment.contrasts, ctx.repetition)
            kept += self.locality.rows_for(self.model, asked) if asked else []
            weights_kept += [self.augment.contrast_weight] * len(asked)
        apart_rows = None  # augment.forget_apart: the forget rows' own steps, before the others; not under DDP,
        # whose ranks must take as many steps as each other
        if rows and forget:  # a contradicted fact's questions, along its old answers (`forgotten`)
            old = self.locality.rows_for(self.model, [q for q, _ in forget], [a for _, a in forget])
            if self.augment.forget_apart and lockstep(self) is None:
                apart_rows = (rows + old, [1.0] * len(rows) + [self.augment.forget_weight] * len(forget))
            else:
                kept += old
                weights_kept += [self.augment.forget_weight] * len(forget)
        if kept:
            row_weights = [1.0] * len(rows) + weights_kept
            rows = rows + kept
        n, width = len(examples), max(e.num_tokens for e in examples)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((n, width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        weights = torch.zeros(n, width)
        for i, e in enumerate(examples):
            ids[i, : e.num_tokens], attn[i, : e.num_tokens] = e.input_ids, 1
            weights[i, : e.num_tokens] = self.token_weights(e, contexts[i] if contexts else ctx)
        ids, attn, weights = ids.to(self.device), attn.to(self.device), weights.to(self.device)
        kl_mask = attn.to(weights.dtype)
        delta_mask = self.edit_sites(examples, ctx, contexts, width)
        share = self.optim.share_prefix and (
            delta_mask is None or agrees_on_prefix(delta_mask, common_prefix_length(ids, attn))
        )  # a prefix computed once has one mask
        loc = locality_batch(rows, self.locality.settings, pad, self.device, row_weights) if rows else None
        apart = None
        if apart_rows is not None:
            apart = locality_batch(apart_rows[0], self.locality.settings, pad, self.device, apart_rows[1])
        projectors = self.null_spaces(ctx, contexts)  # {} unless locality.null_space_energy > 0
        project_lora_a(self.model, projectors, self._null_seen, active_only=True)  # an A written since (fresh, loaded)
        # optim.fresh_ratio_b: B faster while the (active user's) memory is small; not under DDP, whose
        # ranks hold different memories but must step alike
        b_mult = b_factor(self.optim, len(self.memory)) if lockstep(self) is None else 1.0
        self._set_lr(opt, mult, b_mult)
        gate = self.optim.skip_known if ctx.kind in ("fact", "replay") and lockstep(self) is None else 0.0
        if gate:  # per row: the fact it belongs to, and the answer tokens measured
            groups = [id((contexts[i] if contexts else ctx).fact) for i in range(n)]
            answers, measured = batch_answer_mask(examples, width, self.device)
        base_logits, out, loc_kl, taken, known_share, grad_norm = None, None, None, 0, 0.0, 0.0
        noise = self.objective.embedding_noise
        try:
            for _ in range(steps if apart is not None else 0):  # augment.forget_apart: KL alone, along the old answers
                with self._timed("adapter_forward_backward"):
                    loss = self.locality.settings.weight * self._locality_kl(apart)
                grad_norm = self._backward_and_step(opt, loss, projectors)
                taken += 1
            for step in range(steps):
                with (
                    self._timed("adapter_forward_backward"),
                    embedding_noise(self.model, noise, width),
                    lora_delta_mask(self.model, delta_mask),
                ):
                    logits = shared_prefix_forward(self.model, ids, attn, share)
                step_weights = weights
                if gate:  # known-fact gate (olm.gate): a known fact's rows keep only the KL term
                    known = known_rows(target_min_p(logits.detach(), ids, answers), measured, groups, gate)
                    if step == 0:
                        known_share = len({g for g, k in zip(groups, known.tolist()) if k}) / len(set(groups))
                    if bool(known.all()):  # nothing left to learn: no base forward, no locality term, no step
                        if out is None:
                            ce = weighted_token_ce(logits[:, :-1].detach(), ids[:, 1:], weights[:, 1:])
                            out = {"loss": self.objective.task_lambda * ce, "kl": torch.zeros(()), "ce": ce}
                            loss = out["loss"]
                        break
                    step_weights = weights * (~known).to(weights)[:, None]
                if base_logits is None:  # the base's logits do not change between steps
                    with self._timed("base_forward"), torch.no_grad(), self.model.disable_adapter():
                        base_logits = shared_prefix_forward(self.model, ids, attn, self.optim.share_prefix)
                with self._timed("adapter_forward_backward"):
                    out = online_loss(logits, base_logits, ids, step_weights, kl_mask, lam, self.objective.task_lambda)
                    loss = out["loss"]
                    if loc is not None:
                        loc_kl = self._locality_kl(loc)
                        loss = loss + self.locality.settings.weight * loc_kl
                grad_norm = self._backward_and_step(opt, loss, projectors)
                taken += 1
        finally:
            self._set_lr(opt, 1.0)
        stats = {
            "loss": loss.item(), "kl": out["kl"].item(), "ce": out["ce"].item(),
            "locality_kl": loc_kl.item() if loc_kl is not None else 0.0,
            "grad_norm": grad_norm, "lr": opt.param_groups[0]["base_lr"] * mult, "kl_lambda": lam,
            "steps": taken, "examples": n + len(rows),
        }  # fmt: skip
        if gate:
            stats["known"] = known_share  # share of the batch's facts known before its first step
        if two_groups(self.optim):  # LoRA+: B's lr in these steps (turn/lr_b in TensorBoard)
            stats["lr_b"] = self.optim.lr * self.optim.lr_ratio_b * b_mult * mult
        return stats

    def null_spaces(self, ctx: Context, contexts: list[Context] | None) -> dict:
        """The null spaces a step keeps the LoRA A in (`LocalityTerm.projectors`), less the keys of the
        step's facts and the memory's most important ones (`locality.exempt_facts`, `olm.exemption`; not
        under DDP). When that set of facts changes, every A is projected again."""
        base = self.locality.projectors(self.model)
        if not base or self.exemption.limit == 0 or lockstep(self) is not None:
            return base
        facts = [c.fact for c in (contexts or [ctx])]
        texts = self.exemption.chosen(facts, self.memory, self.detector.pattern)
        spaces, changed = self.exemption.spaces(self.model, self.tokenizer, base, texts)
        if changed:
            self._null_seen.clear()
        return spaces

    def edit_sites(
        self, examples: list[Example], ctx: Context, contexts: list[Context] | None, width: int
    ) -> torch.Tensor | None:
        """(N, width) mask of where each row's LoRA delta is kept (`objective.edit_at`, `olm.editsite`);
        None (no restriction) unless edit_at is "subject" and this is a fact or replay step."""
        if self.objective.edit_at != "subject" or ctx.kind not in ("fact", "replay"):
            return None
        rows = []
        for i, e in enumerate(examples):
            fact = (contexts[i] if contexts else ctx).fact
            pattern = self.detector.pattern(fact.pattern) if fact is not None else None
            first_person = pattern is not None and bool(pattern.subject)  # "me": not a word of its rows
            rows.append((e.text, e.offsets, None if fact is None or first_person else fact.subject))
        return edit_mask(rows, width).to(self.device)

    @property
    def memory_clock(self) -> int:
        """The turn count the fact memory ages by: the active user's turns with per_user, else turns_trained."""
        return self.users.state.turns if self.users is not None and self.users.active else self.turns_trained

    def active_optimizer(self):
        """The optimizer `learn` steps: the module's, or with per_user the active user's own."""
        if self.users is None:
            return self.optimizers()
        self.users.changed()
        return self.users.lightning_optimizer(self._trainer)

    def queue_replay(self, facts: list[StoredFact]) -> None:
        """Queue remembered facts to be relearned at the start of the next training_step."""
        self.replay_queue.extend((f.subject, f.key_slot) for f in facts)

    # ----------------------------------------------------------------- helpers
    def _locality_kl(self, batch) -> torch.Tensor:
        """KL(base ‖ adapter) over a locality batch's compared positions (`olm.locality.locality_batch`; the base's
        side cached in it)."""
        logits = shared_prefix_forward(self.model, batch.ids, batch.attention, self.optim.share_prefix, batch.positions)
        return top_k_kl(logits, batch.top_log_p, batch.top_ids, batch.weights)

    def _backward_and_step(self, opt, loss: torch.Tensor, projectors) -> float:
        """Backward (timed with the adapter's forward), then the clipped step and the null-space projection of the
        LoRA A matrices written (`_clip_and_step`, `project_lora_a`); the gradient norm."""
        with self._timed("adapter_forward_backward"):
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
        with self._timed("optimizer_step"):
            grad_norm = self._clip_and_step(opt, loss)
            project_lora_a(self.model, projectors, self._null_seen, active_only=True)
        return grad_norm

    def _clip_and_step(self, opt, loss: torch.Tensor) -> float:
        if (ranks := lockstep(self)) is not None:  # DDP: summed over the ranks, in lockstep (olm.distributed)
            return ranks.step(self, opt, loss)
        params = [p for group in opt.param_groups for p in group["params"]]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.optim.grad_clip))
        if torch.isfinite(loss) and grad_norm == grad_norm and grad_norm != float("inf"):
            opt.step()
        else:  # one host sync per step buys the guarantee that a NaN never reaches the adapter
            self.nonfinite_steps += 1
            log.warning("skipped a step with non-finite loss or gradient (turn %d)", self.turns_trained)
        opt.zero_grad(set_to_none=True)
        return grad_norm

    @staticmethod
    def _set_lr(opt, mult: float, b_mult: float = 1.0) -> None:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * mult * (b_mult if group.get("name") == B_GROUP else 1.0)

    def _run_replay_queue(self) -> list[dict[str, float]]:
        """Learn the queued facts in one batch (each fact's stored exchange and, with
        `augment.on_replay`, its augmentation); the scalars are logged with the turn that follows (a
        step that ends the stream logs nothing, or Lightning would flush stale values of the
        previous turn). Returns one stats dict (with "facts": how many were replayed) or none."""
        facts = []
        while self.replay_queue:
            fact = self.memory.get(*self.replay_queue.pop(0))
            if fact is not None and fact not in facts:  # None: evicted or decayed since it was queued
                facts.append(fact)
        if not facts:
            return []
        examples, contexts, exchanges, forget = [], [], set(), []
        with self._timed("render"):
            for fact in facts:
                ctx = Context("replay", fact=fact, repetition=fact.count, importance=fact.importance)
                mine = []  # its stored exchange, once per batch: one message may have stated several facts
                if (fact.text, fact.reply) not in exchanges:
                    exchanges.add((fact.text, fact.reply))
                    mine.append(self.stored_exchange(fact))
                if self.augment.on_replay:  # a rotation that moves on with the run
                    mine += self.fact_examples(fact, fact.count + self.memory_clock, fact.text, replay=True)
                examples += mine
                contexts += [ctx] * len(mine)
                forget += self.forgotten(fact, fact.count + self.memory_clock)
        # the batch's LR multiplier and KL λ are those of its most important fact
        lead = max(contexts, key=lambda c: c.importance)
        stats = self.learn(examples, lead, contexts, forget)
        for fact in facts:
            self.memory.touch(fact, self.memory_clock)
        return [{**stats, "facts": len(facts)}]

    def _skip_unanswered(self, turn) -> None:
        """respond="skip": a turn without a logged reply is not trained on, only counted and passed."""
        self.no_reply_skipped += 1
        self._mark_trained(turn)
        log_scalars(self.trainer, {"data/no_reply_skipped": float(self.no_reply_skipped)}, turn_step(self))

    def _count_cut(self, example: Example, turn) -> None:
        """Count (and warn about the first few) renderings cut to objective.max_tokens."""
        if not example.cut_tokens:
            return
        self.truncated_tokens += 1
        if self.truncated_tokens <= self.objective.max_warnings:
            more = " (further cuts are only counted: data/truncated_tokens)" if (
                self.truncated_tokens == self.objective.max_warnings) else ""
            log.warning(
                "turn %d: rendering of %d tokens cut to objective.max_tokens=%d (its first %d tokens dropped)%s",
                turn.offset, example.num_tokens + example.cut_tokens, example.num_tokens, example.cut_tokens, more,
            )

    def _mark_trained(self, turn) -> None:
        from olm.data import ChatStreamDataModule  # local: data imports nothing from here

        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, ChatStreamDataModule):
            datamodule.mark_trained(turn)

    @contextmanager
    def _timed(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self._timings[name] += time.perf_counter() - start

    def _record(self, turn, reply: str, ctx: Context, stats: dict, example: Example, replayed: list[dict]) -> None:
        fact = ctx.fact
        self.last = TurnRecord(
            user=turn.user, reply=reply, kind=ctx.kind,
            fact="; ".join(f"{c.fact.subject} | {c.fact.slot or c.fact.relation} | {c.fact.object}"
                           for c in (ctx, *ctx.more)) if fact is not None else None,
            lr=stats["lr"], loss=stats["loss"], kl=stats["kl"], ce=stats["ce"], tokens=example.num_tokens,
            replayed=sum(r["facts"] for r in replayed), timings=dict(self._timings),
        )  # fmt: skip
        scalars = {f"turn/{k}": float(v) for k, v in stats.items()}
        scalars.update({
            "turn/kind": float(KINDS.index(ctx.kind)), "turn/tokens": float(example.num_tokens),
            "turn/time_s": self._timings["turn"], "turn/is_fact": float(ctx.kind == "fact"),
            "facts/memory_size": float(len(self.memory)), "facts/replayed": float(sum(r["facts"] for r in replayed)),
            "data/skipped": float(turn.skipped), "data/offset": float(turn.offset), "turn/nonfinite_steps": float(self.nonfinite_steps),
            "data/truncated": float(turn.truncated), "data/truncated_tokens": float(self.truncated_tokens),
            "data/no_reply_skipped": float(self.no_reply_skipped),
        })  # fmt: skip
        scalars.update({f"time/{k}": v for k, v in self._timings.items()})
        if self.router.enabled and not self.logged_reply(turn) and self.router.last_on is not None:
            scalars["routing/adapter_on"] = float(self.router.last_on.float().mean())  # this turn's reply
        if replayed:
            scalars.update({f"replay/{k}": sum(r[k] for r in replayed) / len(replayed) for k in ("loss", "lr")})
        # straight to the loggers at step = turn index: LightningModule.log costs ~250 µs per scalar
        # (7 ms a turn, 20% of an olm-tiny turn: `python -m olm.bench speed`) and re-logs sparse keys
        log_scalars(self.trainer, scalars, turn_step(self))


# ----------------------------------------------------------------------------- RNG state
def _add_steps(stats: dict[str, float], more: dict[str, float]) -> None:
    """Count another `learn` call's steps and examples into a turn's scalars (the rest stay the first call's)."""
    stats.update(steps=stats["steps"] + more["steps"], examples=stats["examples"] + more["examples"])


def rng_state() -> dict[str, Any]:
    """The random generators' states, in types a ``weights_only`` load accepts: torch (CPU and each
    CUDA device in use), Python's `random`, and numpy's global generator when numpy is loaded."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    np = sys.modules.get("numpy")
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (generators it does not name are left alone)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    np = sys.modules.get("numpy")
    if np is not None and "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))
