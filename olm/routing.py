"""Route each prompt to the adapter or to the base, by how much of it the adapter reads.

The null-space constraint (`olm.nullspace`) keeps every LoRA down-projection A nearly blind to the
input directions unrelated text uses, but only nearly: the protected energy is a share (0.95), the
directions are estimated on a finite corpus, and each block's input drifts with the adapters below
it. What leaks through shifts the form of general answers. Routing makes the rest of the model
*exactly* the base where the adapter has nothing to say, in the spirit of WISE (Wang et al., 2024),
which routes between an edited side memory and the main one by the side memory's activation:

    r(prompt) = max over the prompt's own tokens t of  mean over the adapted layers l of ‖A_l x_t‖² / ‖x_t‖²

the share of each adapted layer's input energy that falls where the adapter reads (A's row space),
averaged over the layers so that no one layer decides (summed energies instead would be ruled by
the MLP down-projections, whose inputs carry most of the summed energy and read common words too).
Tokens of the chat template's shared prefix (system prompt, first header) are not the prompt's
own and are left out. A prompt whose r exceeds τ is answered with the adapter on; any other with
the adapter off — the base, bit for bit. τ sits between two calibration sets:

    τ_0 = `margin` × the `quantile` of r over unrelated prompts (the locality term's prompts)
    τ   = max(τ_0, √(τ_0 · lowest r over the taught facts' trained questions))

the geometric midpoint between what the adapter must leave alone and the questions it was trained
to answer (the `facts` most recently stated facts of the memory; the benchmark's held-out
phrasings are never among them), and never below τ_0. Without facts, τ = τ_0. τ is recomputed
whenever a LoRA tensor has moved by more than `tolerance` (relative L2) since it was last computed,
or the facts' questions changed (`Router` keeps a copy of the weights it calibrated), so it follows
learning, resumes, rollbacks and per-user swaps without being told.

A question made of common words ("When is my birthday?", a fact about the speaker) is read little by an
adapter kept off common text, so its r can stay under τ while the adapter answers it quite differently
from the base. With `shift_margin` > 0 such a prompt also gets the adapter when the first reply token's
distribution moves by more than κ:

    s(prompt) = KL(base ‖ adapter) of the next token after the prompt       (`first_token_shift`)
    κ = `shift_margin` × the largest s over the calibration prompts

With `shift_tokens` N > 1 a prompt also gets the adapter when the largest such KL over the first N tokens of the
adapter's own greedy reply, teacher-forced (`reply_shifts`), exceeds κ_N = `shift_margin` × the largest over the
calibration prompts: an adapter that begins as the base does ("Your name is …") and departs at the object is
still seen; each of the two reads is held to its own calibration.

With `speaker_shift`, a prompt whose question asks about the speaker (`addressee` of its `asked_sentence`: "I live in
a small flat. Any decorating tips?" asks about no one) is held to a κ calibrated on the speaker's facts' own trained
questions, as τ is on the facts' questions: per read, with c the calibration maximum and f the smallest shift over
those questions,

    κ_S = min(κ, √(c · f))  where f > c,  else κ

the geometric midpoint between the unrelated prompts and the trained questions, never above κ nor below c.

Both reads see *that* the adapter answers differently, not *whose* question it answers. The speaker's facts
are keyed on common words ("allergic", "live", "work") that the assistant's own questions share: "Are you
allergic to anything?" reads as much as "What am I allergic to?" and shifts as far, and an adapter that answers
it "You are allergic to celery." leaks the speaker's fact. So with `speaker_words` (I, me, my, mine, myself)
and `assistant_words` (you, your, yours, yourself) a prompt whose last user message asks about the assistant (it
names the assistant last: `addressee`; "What should I call you?", "Can you tell me where you live?") is held to more:
no shift reads, and a read share above τ_S too,

    τ_S = `speaker_margin` × the largest r over the trained questions of the remembered facts about the speaker

(τ_S = 0 until the memory holds a fact about the speaker). The speaker's own questions, and those that name
neither ("Who is Tom?"), keep τ and κ; a made-up person's name reads above τ_S. Facts about others move the
assistant's answers too: after "Zara is my sister." / "She lives in Rome." three times, "Where do you live?" went
to the adapter by its shift and was answered "I live in Ashwood.". With `assistant_words: []` every prompt that
does not name the speaker is held apart, and only once the memory holds a fact about the speaker (applied to
every stream, that rule cost the fact benchmark recall@1: its round-1 questions about made-up people went to the
adapter by their shift).

It is still recall from the weights: the decision reads only the adapter's own activations and outputs
on the prompt and whether its last message names the speaker, never the chat history's content; the memory's
facts only set the numbers τ and τ_S. Learning is not
routed: every training step (the task loss, the KL and locality terms) runs with the adapter on.

Pure functions (`token_shares`, `prompt_scores`, `threshold`) and two model helpers
(`read_shares`: one forward that measures A's share per token; `gated`: a context in which each
row of a batch has the adapter on or off).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from olm.nullspace import lora_layers
from olm.render import messages_for, render_prompt


@dataclass
class RoutingSettings:
    """Per-prompt choice between the adapted model and the base at generation (`olm.routing`)."""

    enabled: bool = False
    """Route generation (replies, recall probes, reports) by the adapter's read share; False = the
    adapter always on."""
    margin: float = 1.0
    """τ_0 = margin × the `quantile` of the calibration prompts' scores: above 1, fewer prompts get the adapter."""
    quantile: float = 1.0
    """Quantile of the calibration scores τ_0 starts from (1.0: their maximum)."""
    calibration: int = 64
    """Calibration prompts: the first N of the locality term's prompt file (0 = all of them)."""
    facts: int = 32
    """τ is raised to the geometric midpoint between τ_0 and the lowest score of the trained questions of
    the N most recently stated facts of the memory (never lowered); 0 = τ_0 from unrelated prompts alone."""
    batch_size: int = 32
    """Rows per calibration forward."""
    shift_margin: float = 0.0
    """Also route by what the adapter *says*: a prompt gets the adapter when the first reply token's
    distribution moves, KL(base ‖ adapter) after the prompt (`first_token_shift`), by more than κ =
    shift_margin × the largest such KL over the calibration prompts, whatever its read share. A question
    made of common words ("When is my birthday?") is read little by an adapter the null-space constraint
    keeps off common text, yet the adapter answers it differently from the base. 0 = read share alone."""
    shift_tokens: int = 1
    """With `shift_margin` and N > 1, a second read: the largest KL(base ‖ adapter) over the first N tokens of
    the adapter's own greedy reply, teacher-forced (`reply_shifts`), against its own κ_N (`shift_margin` × its
    calibration maximum); a prompt gets the adapter when either read is above its κ. An adapter held to the
    base's first word ("Your …", by `augment.contrasts`) still differs where the fact's object comes ("Your name
    is Sam"). 1 = the first reply token alone."""
    speaker_words: list[str] = field(default_factory=lambda: ["I", "me", "my", "mine", "myself"])
    """Once the memory holds a fact about the speaker, the shift reads route only prompts that speak of the
    speaker: one of these words (whole, any case) in the prompt's last user message (`mentions`). They exist for
    the speaker's facts, asked in common words ("Where do I live?"); a question put to the assistant about itself
    ("Where do you live?", "What are you allergic to?") shares nearly the key of one about the speaker, and an
    adapter that answers it differently from the base ("I live in Lisbon.") is leaking the speaker's fact, not
    recalling one. Such a prompt is routed by its read share alone (a made-up person's name still reads above τ). []
    = every prompt (the rule before)."""
    assistant_words: list[str] = field(default_factory=lambda: ["you", "your", "yours", "yourself"])
    """The rule of `speaker_words` holds apart only prompts whose last user message names the assistant (one of
    these words, whole, any case) after any word of the speaker's (`addressee`: "What should I call you?", not "Do you
    know where I live?"): the questions that share the speaker's facts' keys are put to
    the assistant ("Are you allergic to anything?"). "Who is Tom?" and "Which city does the user live in?" name
    neither and keep τ and the shift reads: held apart, a question about a person the speaker named in a chat of
    facts about the speaker too went to the base ("Who is Tom?", read under τ_S). With these words the rule applies
    from the start (τ_S = 0 until a fact about the speaker is remembered). [] = every prompt that does not name the
    speaker, once a fact about the speaker is remembered (the rule before)."""
    unknown_relatives: bool = True
    """A prompt whose last user message names the speaker's relatives ("my boss": "my" and a word of the detector's
    `relation_words`) goes to the base when the memory knows none of them: no fact about "my boss" ("My boss lives in
    Oslo.") and no one who is the speaker's boss ("Zara is my boss."; "my mother" is known from "my mom",
    `detector.relation_synonyms`). Taught "My sister works at Halden Pharma.",
    an adapter answers "Where does my boss work?" with "Your boss works at Halden Pharma." (README, Facts about the
    speaker): the relation word is one token of a question otherwise the same. False = routed like any prompt."""
    speaker_margin: float = 2.0
    """With `speaker_words`, a prompt that does not name the speaker also needs a read share above τ_S =
    speaker_margin × the largest over the trained questions of the remembered facts about the speaker (`facts`
    of them). Those facts' keys are common words ("allergic", "live", "work"), which the assistant's own
    questions share: "Are you allergic to anything?" reads as much as "What am I allergic to?" (0.0050 and 0.0049
    against τ_0 0.0015 in a chat), and would be answered "You are allergic to celery.". The speaker's own
    questions keep τ and the shift reads. 0 = τ for every prompt."""
    speaker_shift: bool = False
    """With `shift_margin`, `speaker_words` and facts about the speaker in memory, a prompt whose question asks about
    the speaker (the `addressee` of its `asked_sentence`: "What language do I speak?", "Do you know where I live?"; not
    "I live in a small flat. Any decorating tips?") is held to a lower κ where the speaker's facts' own trained
    questions shift more than any calibration prompt: per shift read, κ_S = min(κ, √(c · f)) with c the largest shift
    over the calibration prompts and f the smallest over those questions (κ where f ≤ c). The speaker's questions are
    common words, read little (under τ), and their shift can stay under κ = `shift_margin` × c though above every
    unrelated prompt's: in a chat, "What language do I speak?" — a trained question — shifted 7.3 against κ 8.8 and
    c 4.4, and went to the base. Prompts about the assistant or whose question names no one keep κ. False = κ for every
    prompt (default.yaml and chat.yaml: true; held to the whole message's addressee instead of its asking sentence,
    it once sent "I live in a small flat. Any decorating tips?" to the adapter, which answered "You like origami.";
    README)."""
    tolerance: float = 0.0
    """Recompute τ once some LoRA tensor moved by more than this share of its norm (‖W − W_τ‖ > tolerance ·
    ‖W_τ‖) since τ was computed; 0 = after any change. A calibration is one forward of the
    `calibration` prompts: a chat's small-LR turns need not pay it every time."""

    def __post_init__(self) -> None:
        problems = []
        if not self.margin > 0:
            problems.append(f"routing.margin must be > 0, got {self.margin!r}")
        if not 0 < self.quantile <= 1:
            problems.append(f"routing.quantile must be in (0, 1], got {self.quantile!r}")
        if self.facts < 0:
            problems.append(f"routing.facts must be >= 0, got {self.facts!r}")
        if self.calibration < 0:
            problems.append(f"routing.calibration must be >= 0, got {self.calibration!r}")
        if self.batch_size < 1:
            problems.append(f"routing.batch_size must be >= 1, got {self.batch_size!r}")
        if not 0 <= self.shift_margin < float("inf"):
            problems.append(f"routing.shift_margin must be a finite number >= 0, got {self.shift_margin!r}")
        if not (isinstance(self.shift_tokens, int) and 1 <= self.shift_tokens <= 64):
            problems.append(f"routing.shift_tokens must be an integer in [1, 64], got {self.shift_tokens!r}")
        for name in ("speaker_words", "assistant_words"):
            if not all(isinstance(w, str) and re.fullmatch(r"\w+", w) for w in getattr(self, name)):
                problems.append(f"routing.{name} must be words (letters, digits, _), got {getattr(self, name)!r}")
        if not 0 <= self.speaker_margin < float("inf"):
            problems.append(f"routing.speaker_margin must be a finite number >= 0, got {self.speaker_margin!r}")
        if not 0 <= self.tolerance < 1:
            problems.append(f"routing.tolerance must be in [0, 1), got {self.tolerance!r}")
        if problems:
            raise ValueError("invalid routing settings: " + "; ".join(problems))


def token_shares(read: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
    """(B, T) share of each token's input energy a layer's adapter reads: ‖A x‖² / ‖x‖² (0 where no energy)."""
    return torch.where(energy > 0, read / energy.clamp_min(1e-30), torch.zeros_like(read))


def prompt_scores(shares: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """(B,) the largest share over each row's own tokens (`own`, (B, T) bool); 0 for a row with none."""
    masked = torch.where(own, shares, torch.zeros_like(shares))
    return masked.max(dim=1).values if shares.shape[1] else torch.zeros(shares.shape[0])


def threshold(
    scores: torch.Tensor, quantile: float, margin: float, facts: torch.Tensor | None = None
) -> float:
    """τ from the unrelated prompts' `scores` (1-D, non-empty) and the taught facts' questions' `facts`:
    τ_0 = margin × the `quantile` of `scores`; with facts, max(τ_0, √(τ_0 · min(facts)))."""
    if scores.numel() == 0:
        raise ValueError("routing needs at least one calibration prompt")
    tau = margin * float(torch.quantile(scores.double(), quantile))
    if facts is not None and facts.numel():
        tau = max(tau, (tau * float(facts.min())) ** 0.5)
    return tau


def own_tokens(ids: torch.Tensor, attention: torch.Tensor, prefix: list[int]) -> torch.Tensor:
    """(B, T) bool: the real tokens of each row that are not the shared template prefix `prefix`
    (the prefix is skipped where a row, after its left padding, starts with it)."""
    own = attention.bool().clone()
    n = len(prefix)
    if n == 0:
        return own
    pre = torch.tensor(prefix, dtype=ids.dtype, device=ids.device)
    for i in range(ids.shape[0]):
        real = torch.nonzero(attention[i], as_tuple=False).flatten()
        if real.numel() < n:
            continue
        start = int(real[0])
        if torch.equal(ids[i, start : start + n], pre):
            own[i, start : start + n] = False
    return own


class _Measured(Exception):
    """Raised by `read_shares`'s hook once every adapted layer has been seen: the rest of the forward
    (the blocks above the adapted ones, the LM head) cannot change the score."""


@torch.no_grad()
def read_shares(model: nn.Module, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """A forward with the adapter on, up to the last adapted layer: per token, the mean over the LoRA
    layers of ‖A x‖² / ‖x‖² (`token_shares`).

    Returns:
        (B, T) float32 on the model's device.
    """
    layers = lora_layers(model)
    total = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    linears = [lin for layer in layers.values() for lin in active_a(layer)]
    seen = [0]

    def hook(_module, args, out):
        total.add_(token_shares(out.float().pow(2).sum(-1), args[0].float().pow(2).sum(-1)))
        seen[0] += 1
        if seen[0] == len(linears):
            raise _Measured

    handles = [lin.register_forward_hook(hook) for lin in linears]
    was_training = model.training
    model.eval()  # no LoRA dropout: the hook sees x itself
    try:
        model(input_ids=ids, attention_mask=attention, use_cache=False)
    except _Measured:
        pass
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total / max(len(linears), 1)


def last_prompt_positions(attention: torch.Tensor, prompt_end: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) the column of each row's last prompt token: ``prompt_end - 1``, or the last real token of a
    left- or right-padded row."""
    if prompt_end is not None:
        return prompt_end.to(attention.device).long() - 1
    return attention.shape[1] - 1 - attention.flip(1).int().argmax(1)


@torch.no_grad()
def first_token_log_probs(
    model: nn.Module, ids: torch.Tensor, attention: torch.Tensor, prompt_end: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, V) float32 log-probabilities of the token after each row's prompt, the model as it is (adapter on, or
    the base inside ``disable_adapter()``): one forward in eval mode, the LM head at that one position per row.

    Args:
        prompt_end: (B,) as in `Router.route` (rows that go on past their prompt); None = the last real token.
    """
    pos = last_prompt_positions(attention, prompt_end)
    keep = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    keep[torch.arange(ids.shape[0], device=ids.device), pos] = True
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=ids, attention_mask=attention, use_cache=False, logits_to_keep=keep).logits
    finally:
        model.train(was_training)
    return F.log_softmax(logits.float().reshape(ids.shape[0], -1), -1)


def first_token_shift(
    model: nn.Module, ids: torch.Tensor, attention: torch.Tensor, prompt_end: torch.Tensor | None = None,
    base_log_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) KL(base ‖ adapter) of the next-token distributions after each row's prompt: how differently the
    adapter would begin the reply (`first_token_log_probs` with the adapter on and off).

    Args:
        prompt_end: as in `first_token_log_probs`.
        base_log_p: the base's `first_token_log_probs` of these rows, when known (they never change).
    """
    log_q = first_token_log_probs(model, ids, attention, prompt_end)
    if base_log_p is None:
        with model.disable_adapter():
            base_log_p = first_token_log_probs(model, ids, attention, prompt_end)
    log_p = base_log_p.to(log_q.device)
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0).cpu()


def prompt_batch(
    ids: torch.Tensor, attention: torch.Tensor, prompt_end: torch.Tensor | None, pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's prompt alone (its real tokens, before ``prompt_end`` when given) as a left-padded batch."""
    rows = []
    for i in range(ids.shape[0]):
        real = torch.nonzero(attention[i], as_tuple=False).flatten()
        if prompt_end is not None:
            real = real[real < int(prompt_end[i])]
        rows.append(ids[i, real])
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad, dtype=ids.dtype, device=ids.device)
    mask = torch.zeros_like(out)
    for i, r in enumerate(rows):
        out[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    return out, mask


@torch.no_grad()
def reply_shifts(
    model: nn.Module, ids: torch.Tensor, attention: torch.Tensor, prompt_end: torch.Tensor | None = None,
    tokens: int = 1, stop: frozenset[int] = frozenset(), pad: int = 0,
) -> torch.Tensor:
    """(B, tokens) KL(base ‖ adapter) of the next-token distributions at each of the first `tokens` positions
    of the reply, teacher-forced on the adapter's own greedy reply: how differently the adapter goes on, and
    where. Positions after the adapter's reply ends (a `stop` token) read 0. Column 0 is `first_token_shift`.

    The adapter's greedy tokens come from one prompt forward and `tokens` − 1 cached steps (eval mode), its
    distributions along the way; the base's from one forward over the prompt and those tokens.

    Args:
        prompt_end: as in `first_token_log_probs`.
        pad: the id the prompts are left-padded with (masked out).
    """
    ids, attention = prompt_batch(ids, attention, prompt_end, pad)
    was_training = model.training
    model.eval()
    try:
        log_q, chosen = [], []
        out = model(input_ids=ids, attention_mask=attention, use_cache=True, logits_to_keep=1)
        mask = attention
        for step in range(tokens):
            log_q.append(F.log_softmax(out.logits[:, -1].float(), -1))
            chosen.append(log_q[-1].argmax(-1))
            if step == tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(
                input_ids=chosen[-1][:, None], attention_mask=mask, past_key_values=out.past_key_values,
                use_cache=True, logits_to_keep=1,
            )  # fmt: skip
        forced = torch.cat([ids, *(c[:, None] for c in chosen[:-1])], dim=1)
        with model.disable_adapter():
            base = model(input_ids=forced, attention_mask=mask, use_cache=False, logits_to_keep=tokens).logits
    finally:
        model.train(was_training)
    log_p, log_q = F.log_softmax(base.float(), -1), torch.stack(log_q, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0)  # (B, tokens)
    if stop:
        stopped = torch.isin(torch.stack(chosen, dim=1), torch.tensor(sorted(stop), device=kl.device)).int()
        kl = kl.masked_fill(torch.cumsum(stopped, dim=1) - stopped > 0, 0.0)  # a stop token before this position
    return kl.cpu()


def active_a(layer: nn.Module) -> list[nn.Module]:
    """The A linears of a peft LoRA layer's active adapters."""
    names = layer.active_adapters if hasattr(layer, "active_adapters") else list(layer.lora_A)
    return [layer.lora_A[n] for n in names if n in layer.lora_A]


@contextmanager
def gated(model, on: torch.Tensor):
    """Rows of `on` (B,) True run with the adapter, False without it (the base, exactly).

    All on: nothing changes; none on: peft's ``disable_adapter()``; mixed: every LoRA B output is
    multiplied by the row's 0/1 (a forward hook), so a batch is still one forward.
    """
    if bool(on.all()):
        yield
        return
    if not bool(on.any()):
        with model.disable_adapter():
            yield
        return
    handles = []
    for layer in lora_layers(model).values():
        for lin in layer.lora_B.values():
            def scale(_module, _args, out):
                return out * on.to(device=out.device, dtype=out.dtype).view(-1, *([1] * (out.dim() - 1)))

            handles.append(lin.register_forward_hook(scale))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def adapter_disabled(model: nn.Module) -> bool:
    """Whether the LoRA layers are switched off (inside peft's ``disable_adapter()``)."""
    return any(getattr(layer, "disable_adapters", False) for layer in lora_layers(model).values())


def active_lora(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA parameters of the active adapter(s), by name (per-user runs keep every loaded user's
    adapter in the model; only the active one answers)."""
    names = next((tuple(layer.active_adapters) for layer in lora_layers(model).values()), ())
    return {
        name: p for name, p in model.named_parameters() if "lora_" in name and any(f".{a}." in name for a in names)
    }


def lora_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the active adapter's LoRA parameters, by name."""
    return {name: p.detach().clone() for name, p in active_lora(model).items()}


@torch.no_grad()
def moved(model: nn.Module, snapshot: dict[str, torch.Tensor], tolerance: float) -> bool:
    """Whether some LoRA tensor differs from `snapshot` by more than `tolerance` × its snapshot norm
    (any change at 0; another set of tensors, another user's adapter active for one, always counts)."""
    now = active_lora(model)
    if now.keys() != snapshot.keys():
        return True
    for name, p in now.items():
        old = snapshot[name]
        if p.shape != old.shape:
            return True
        diff = float((p - old).norm())
        if diff > tolerance * float(old.norm()) or (tolerance == 0 and not torch.equal(p, old)):
            return True
    return False


class Router:
    """Decides per prompt whether the adapter answers (see the module docstring).

    Args:
        settings: routing settings.
        tokenizer: the model's tokenizer (with a chat template).
        prompts: the calibration prompts (unrelated text).
        fact_questions: called with `settings.facts`, the trained questions of that many of the most
            recently stated facts (the second calibration set); None = none.
        speaker_questions: the same for the facts about the speaker alone (τ_S, `speaker_margin`); None = none.
        relatives: (regex, known, key) for `unknown_relatives`: the regex finds the speaker's relatives in a
            message ("my boss", group 1 the relation words), `known()` gives the relation words the memory knows,
            and two are the same relative when `key` gives both the same (`olm.facts.relation_key`: "older sister"
            knows "my sister", "mom" knows "my mother"); None = the rule is off.
    """

    def __init__(
        self, settings: RoutingSettings, tokenizer, prompts: list[str],
        fact_questions: Callable[[int], list[str]] | None = None,
        speaker_questions: Callable[[int], list[str]] | None = None,
        relatives: tuple[re.Pattern, Callable[[], set[str]], Callable[[str], str]] | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.tokenizer = tokenizer
        self.prompts = list(prompts[: settings.calibration] if settings.calibration else prompts)
        if settings.enabled and not self.prompts:
            raise ValueError("routing.enabled needs calibration prompts (the locality prompt file is empty)")
        self.fact_questions = fact_questions
        self.speaker_questions = speaker_questions
        self.relatives = relatives if settings.unknown_relatives else None
        self.prefix = template_prefix(tokenizer)
        self._tau: tuple[dict, tuple, RoutingSettings, float, torch.Tensor, float, torch.Tensor] | None = None
        """The LoRA weights, fact questions (all, about the speaker) and settings τ was computed for, τ, κ
        (`shift_margin`), τ_S (`speaker_margin`) and κ_S (`speaker_shift`)."""
        self._base_first: torch.Tensor | None = None
        """(N, V) the base's `first_token_log_probs` of the calibration prompts (computed once)."""
        self.last_on: torch.Tensor | None = None
        """Which rows of the last routed batch got the adapter (diagnostics; None until one is routed)."""
        words = "|".join(re.escape(w) for w in settings.speaker_words)
        self._speaker = re.compile(rf"\b(?:{words})\b", re.IGNORECASE) if words else None
        """`speaker_words` as one regex (None: every prompt may be routed by its shift)."""
        addressed = "|".join(re.escape(w) for w in settings.assistant_words)
        self._assistant = re.compile(rf"\b(?:{addressed})\b", re.IGNORECASE) if addressed else None
        """`assistant_words` as one regex (None: every prompt that does not name the speaker is held apart)."""
        self._user_header = user_header(tokenizer) if words or self.relatives else ""
        """The template text before each user message ("<|im_end|>\\n<|im_start|>user\\n"): `mentions` reads
        the last user message."""

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def scores(
        self, model, ids: torch.Tensor, attention: torch.Tensor, prompt_end: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) each row's read share r (see the module docstring; `prompt_end` as in `route`)."""
        shares = read_shares(model, ids, attention)
        own = own_tokens(ids, attention, self.prefix)
        if prompt_end is not None:
            own &= torch.arange(ids.shape[1], device=ids.device)[None, :] < prompt_end.to(ids.device)[:, None]
        return prompt_scores(shares, own).cpu()

    def mentions(
        self, ids: torch.Tensor, attention: torch.Tensor, prompt_end: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) bool: which rows' last user message (of the row's own tokens, `own_tokens`, decoded; before
        `prompt_end` when given) holds one of `speaker_words`; all True without them. The last message alone:
        with `history_turns`, "Are you allergic to anything?" after "I am allergic to celery." asks of the assistant."""
        if self._speaker is None:
            return torch.ones(ids.shape[0], dtype=torch.bool)
        texts = self._last_messages(ids, attention, prompt_end)
        return torch.tensor([self._speaker.search(t) is not None for t in texts], dtype=torch.bool)

    def held_apart(
        self, ids: torch.Tensor, attention: torch.Tensor, prompt_end: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) bool: the rows the speaker rule holds apart (no shift reads, τ_S): with `assistant_words`, those
        whose last user message asks about the assistant (`addressee`); without, those that name none of
        `speaker_words`; all False without `speaker_words`."""
        return self._held(self.addressees(ids, attention, prompt_end))

    def _held(self, who: list[str | None]) -> torch.Tensor:
        """`held_apart` from the rows' `addressees`."""
        if self._speaker is None:
            return torch.zeros(len(who), dtype=torch.bool)
        if self._assistant is None:  # every row that does not name the speaker
            return torch.tensor([w != "speaker" for w in who], dtype=torch.bool)
        return torch.tensor([w == "assistant" for w in who], dtype=torch.bool)

    def addressees(
        self, ids: torch.Tensor, attention: torch.Tensor, prompt_end: torch.Tensor | None = None,
        texts: list[str] | None = None,
    ) -> list[str | None]:  # fmt: skip
        """Each row's `addressee` ("speaker", "assistant" or None) of its last user message (`texts`, when the caller
        has decoded them already); all None without `speaker_words`. Without `assistant_words` a row that names the
        speaker asks about the speaker."""
        if self._speaker is None:
            return [None] * ids.shape[0]
        texts = self._last_messages(ids, attention, prompt_end) if texts is None else texts
        return [self._addressee(t) for t in texts]

    def _addressee(self, text: str) -> str | None:
        """`addressee` of one text under the word sets (without `assistant_words`: "speaker" wherever it names the
        speaker)."""
        if self._assistant is None:
            return "speaker" if self._speaker.search(text) else None
        return addressee(text, self._speaker, self._assistant)

    def unknown_relative(
        self, ids: torch.Tensor, attention: torch.Tensor, prompt_end: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) bool: the rows whose last user message names the speaker's relatives, none of them known
        (`unknown_relatives`); all False without `relatives`."""
        if self.relatives is None:
            return torch.zeros(ids.shape[0], dtype=torch.bool)
        regex, known, key = self.relatives
        texts = self._last_messages(ids, attention, prompt_end)
        named = [{key(m.group(1)) for m in regex.finditer(t)} for t in texts]
        if not any(named):
            return torch.zeros(ids.shape[0], dtype=torch.bool)
        knows = {key(w) for w in known()}
        return torch.tensor([bool(n) and not n & knows for n in named], dtype=torch.bool)

    def _last_messages(self, ids: torch.Tensor, attention: torch.Tensor, prompt_end: torch.Tensor | None) -> list[str]:
        """Each row's last user message: its own tokens (`own_tokens`; before `prompt_end` when given), decoded."""
        own = own_tokens(ids, attention, self.prefix)
        if prompt_end is not None:
            own &= torch.arange(ids.shape[1], device=ids.device)[None, :] < prompt_end.to(ids.device)[:, None]
        texts = []
        for i in range(ids.shape[0]):
            text = self.tokenizer.decode(ids[i][own[i]].tolist(), skip_special_tokens=False)
            texts.append(text.rsplit(self._user_header, 1)[-1] if self._user_header else text)
        return texts

    def tau(self, model) -> float:
        """τ for the adapter's current weights and facts (recomputed when the weights moved past
        `tolerance`, the facts' questions or the settings changed)."""
        return self._calibrated(model)[0]

    def kappa(self, model) -> torch.Tensor:
        """κ per shift read (`shift`'s columns): the shift above which a prompt gets the adapter (`shift_margin`;
        inf when 0)."""
        return self._calibrated(model)[1]

    def speaker_kappa(self, model) -> torch.Tensor:
        """κ_S per shift read: the κ of prompts that ask about the speaker (`speaker_shift`; κ without it)."""
        return self._calibrated(model)[4]

    def speaker_tau(self, model) -> float:
        """τ_S: the read share a prompt held apart (`held_apart`) must pass too (`speaker_margin`; 0 without
        facts about the speaker, `speaker_words` or `speaker_margin`)."""
        return self._calibrated(model)[2]

    def _calibrated(self, model) -> tuple[float, torch.Tensor, float, bool, torch.Tensor]:
        s = self.settings
        questions = tuple(self.fact_questions(s.facts)) if self.fact_questions is not None and s.facts else ()
        about_speaker = (
            tuple(self.speaker_questions(s.facts))
            if self.speaker_questions is not None and s.facts and self._speaker is not None
            else ()
        )  # fmt: skip
        if (
            self._tau is None or self._tau[1] != (questions, about_speaker) or self._tau[2] != s
            or moved(model, self._tau[0], s.tolerance)
        ):  # fmt: skip
            asked = list(dict.fromkeys(questions + about_speaker))  # each question once
            read = dict(zip(asked, self.calibration_scores(model, asked).tolist())) if asked else {}
            facts = torch.tensor([read[q] for q in questions]) if questions else None
            tau = threshold(self.calibration_scores(model), s.quantile, s.margin, facts)
            unrelated = self.calibration_shifts(model).amax(0) if s.shift_margin else None
            kappa = s.shift_margin * unrelated if s.shift_margin else torch.full((1,), float("inf"))
            kappa_s = kappa
            if s.speaker_shift and unrelated is not None and about_speaker and self._speaker is not None:
                kappa_s = speaker_kappa(kappa, unrelated, self.calibration_shifts(model, list(about_speaker)).amin(0))
            tau_s = s.speaker_margin * max(read[q] for q in about_speaker) if about_speaker else 0.0
            self._tau = (lora_snapshot(model), (questions, about_speaker), replace(s), tau, kappa, tau_s, kappa_s)
        rule = self._speaker is not None and (self._assistant is not None or bool(self._tau[1][1]))
        return self._tau[3], self._tau[4], self._tau[5], rule, self._tau[6]

    def speaker_rule(self, model) -> bool:
        """Whether prompts put to the assistant are held apart (`held_apart`: no shift reads, τ_S): with `speaker_words`
        and `assistant_words`, always (τ_S is 0 until the memory holds a fact about the speaker); with `speaker_words`
        alone, once the memory holds a fact about the speaker (whose key the assistant's questions share)."""
        return self._calibrated(model)[3]

    def calibration_scores(self, model, prompts: list[str] | None = None) -> torch.Tensor:
        """(N,) the read shares of fresh-chat `prompts` (default: the unrelated calibration prompts)."""
        return self._over_prompts(model, self.scores, prompts)

    def calibration_shifts(self, model, prompts: list[str] | None = None) -> torch.Tensor:
        """(N, S) the reply shifts (`shift`) of fresh-chat `prompts` (default: the calibration prompts; with
        `shift_tokens` 1 their base outputs are computed once and kept: the base never changes)."""
        if self.settings.shift_tokens > 1 or prompts is not None:  # the adapter's own reply, or prompts not kept
            return self._over_prompts(model, self.shift, prompts)
        if self._base_first is None:
            with model.disable_adapter():
                self._base_first = self._over_prompts(model, first_token_log_probs, None)
        done = [0]

        def shift(m, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
            rows = self._base_first[done[0] : done[0] + ids.shape[0]]
            done[0] += ids.shape[0]
            return first_token_shift(m, ids, attention, None, rows)[:, None]

        return self._over_prompts(model, shift, None)

    def shift(
        self, model, ids: torch.Tensor, attention: torch.Tensor, prompt_end: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, S) the shifts each row is routed by: the first reply token's (`first_token_shift`), and with
        `shift_tokens` N > 1 also the largest over the adapter's first N greedy reply tokens (`reply_shifts`)."""
        if self.settings.shift_tokens <= 1:
            return first_token_shift(model, ids, attention, prompt_end)[:, None]
        tok = self.tokenizer
        stop = frozenset(t for t in (tok.eos_token_id, tok.pad_token_id) if t is not None)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        kl = reply_shifts(model, ids, attention, prompt_end, self.settings.shift_tokens, stop, pad)
        return torch.stack([kl[:, 0], kl.amax(1)], dim=1)

    def _over_prompts(self, model, measure, prompts: list[str] | None) -> torch.Tensor:
        """`measure(model, ids, attention)` over fresh-chat `prompts` (default: the calibration prompts) in
        batches of `batch_size`, concatenated."""
        tok = self.tokenizer
        device = next(model.parameters()).device
        prompts = self.prompts if prompts is None else prompts
        out = []
        for i in range(0, len(prompts), self.settings.batch_size):
            texts = [render_prompt(tok, messages_for(p)) for p in prompts[i : i + self.settings.batch_size]]
            batch = left_padded(tok, texts, device)
            out.append(measure(model, batch["input_ids"], batch["attention_mask"]))
        return torch.cat(out)

    def route(
        self, model, ids: torch.Tensor, attention: torch.Tensor, prompt_end: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) bool: which rows get the adapter (all True when routing is off).

        Args:
            ids, attention: the prompts, (B, T), left- or right-padded.
            prompt_end: (B,) with rows that go on past their prompt (teacher forcing): each row's
                prompt ends before this column, and only its prompt is scored, as generation would.
        """
        if not self.settings.enabled or adapter_disabled(model):
            return torch.ones(ids.shape[0], dtype=torch.bool)  # nothing to route (inside disable_adapter: the base)
        tau, kappa, tau_s, rule, kappa_s = self._calibrated(model)  # one check of the weights per routed batch
        read = self.scores(model, ids, attention, prompt_end)
        decode = self._speaker is not None and (rule or kappa_s is not kappa)  # whom each row's last message asks
        texts = self._last_messages(ids, attention, prompt_end) if decode else None
        held = self._held(self.addressees(ids, attention, prompt_end, texts)) if rule else None
        on = read > tau
        if held is not None and tau_s > tau:  # asked of the assistant, not of the speaker: above τ_S too
            on &= ~held | (read > tau_s)
        if bool(torch.isfinite(kappa).all()) and not bool(on.all()):
            ask = torch.nonzero(~on if held is None else ~on & ~held, as_tuple=False).flatten()
            if ask.numel():  # the shift reads: only where they could change the choice (a forward or N each)
                end = prompt_end[ask.to(prompt_end.device)] if prompt_end is not None else None
                dev = ask.to(ids.device)
                bar = kappa.expand(len(ask), -1).clone()
                if kappa_s is not kappa and texts is not None:  # the rows whose question asks about the speaker: κ_S
                    asks = [self._addressee(asked_sentence(texts[i])) for i in ask.tolist()]
                    bar[torch.tensor([w == "speaker" for w in asks], dtype=torch.bool)] = kappa_s
                on[ask] = (self.shift(model, ids[dev], attention[dev], end) > bar).any(1)
        if self.relatives is not None and bool(on.any()):
            on &= ~self.unknown_relative(ids, attention, prompt_end)
        self.last_on = on
        return self.last_on


def speaker_kappa(kappa: torch.Tensor, unrelated: torch.Tensor, trained: torch.Tensor) -> torch.Tensor:
    """κ_S per shift read (`RoutingSettings.speaker_shift`): min(κ, √(c · f)) where the smallest shift of the speaker's
    trained questions f is above the calibration prompts' largest c, else κ."""
    midpoint = torch.sqrt(unrelated.clamp_min(0) * trained.clamp_min(0))
    return torch.where(trained > unrelated, torch.minimum(kappa, midpoint), kappa)


ASKING_FRAME = re.compile(
    r"\b(?:do|did|can|could|would|will)\s+you\s+(?:please\s+)?(?:know|remember|recall|(?:tell|remind)(?:\s+me)?)\b",
    re.IGNORECASE,
)
"""The words that put a question to the assistant without being its topic: "Do you know", "Can you tell me", "Could
you remind me" (`addressee` skips the word-set matches inside them)."""


def addressee(text: str, speaker: re.Pattern, assistant: re.Pattern) -> str | None:
    """Whom `text` asks about: "speaker" or "assistant", whichever of the two word sets (`speaker_words`,
    `assistant_words`, as regexes) has the last match outside an `ASKING_FRAME`; None where neither matches. The
    person named last is the one asked about: "What should I call you?", "Can you tell me where you live?" ask of
    the assistant; "Do you know where I live?", "Can you tell me my name?" of the speaker; "Do you know who Zara
    is?", "Can you tell me who Zara is?" of neither (the frame's "you" and "me" are who knows and who asks: held
    apart as the assistant's, a trained question about Zara went to the base, which answered "Zara is a fictional
    character ...")."""
    frames = [m.span() for m in ASKING_FRAME.finditer(text)]
    last = {who: max((m.end() for m in rx.finditer(text) if not any(a <= m.start() < b for a, b in frames)),
                     default=-1)
            for who, rx in (("speaker", speaker), ("assistant", assistant))}  # fmt: skip
    if max(last.values()) < 0:
        return None
    return "assistant" if last["assistant"] > last["speaker"] else "speaker"


def asked_sentence(text: str) -> str:
    """The sentence of a message that asks: its last question ("I live in a small flat. Any decorating tips?" → "Any
    decorating tips?"), else its last sentence ("Tell me where I live."). `speaker_shift` holds a prompt to κ_S only
    when this sentence names the speaker: a statement about oneself before a question about something else is not a
    question about the speaker."""
    sentences = [t for t in re.split(r"(?<=[.!?])\s+", text.strip()) if t.strip()]
    questions = [t for t in sentences if t.rstrip().endswith("?")]
    return (questions or sentences or [""])[-1]


def left_padded(tokenizer, texts: list[str], device) -> dict[str, torch.Tensor]:
    """`texts` tokenized as one left-padded batch (no special tokens added: the template has them)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
    return {k: v.to(device) for k, v in batch.items()}


def user_header(tokenizer) -> str:
    """The template text right before every user message: the common end of what precedes the user's text in a
    fresh chat (after the system prompt) and after an earlier exchange ("<|im_end|>\\n<|im_start|>user\\n")."""
    mark = "olm-routing-mark"
    one = render_prompt(tokenizer, messages_for(mark))
    two = render_prompt(tokenizer, messages_for(mark, (("a", "b"),)))
    one, two = one[: one.index(mark)], two[: two.index(mark)]
    n = 0
    while n < min(len(one), len(two)) and one[-1 - n] == two[-1 - n]:
        n += 1
    return one[len(one) - n :]


def template_prefix(tokenizer) -> list[int]:
    """The token ids every fresh-chat prompt starts with (the template's system prompt and first
    header): the common prefix of two renderings that differ only in the user's text."""
    a = tokenizer(render_prompt(tokenizer, messages_for("a")), add_special_tokens=False).input_ids
    b = tokenizer(render_prompt(tokenizer, messages_for("z")), add_special_tokens=False).input_ids
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return list(a[:n])
