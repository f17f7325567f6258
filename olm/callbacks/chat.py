"""ChatCallback: the interactive front end — talk to the model while it learns from every message.

    python cli.py fit --config configs/chat.yaml        # the same command again continues the chat

The data module reads stdin (``data.source: "-"``, ``format: text``) through this callback's
console (`ChatStreamDataModule.use_console`): it prints the prompt ``you> `` (flushed) before each
read and runs commands itself, so they never reach the model:

  /facts   the fact memory as a table        /stats   the latest logged metrics
  /save    write last.ckpt and the adapter    /quit    save and exit (also Ctrl+C, Ctrl+D)
  /user    /user NAME: talk as NAME (per-user learning: ``--model.per_user true``)
  /help    this list

With per-user learning the prompt is the current user (``alice> ``): ``--data.user_id NAME`` sets
the first, ``/user NAME`` switches (an invalid name is refused with the reason; the chat goes on),
and every line is learned into that user's own adapter and fact memory (`olm.users`); /facts
shows the current user's.

After each trained turn it prints the reply to the message just typed (`OnlineLM.last`; the module's
``training_step(dataloader_iter)`` reads one turn per step, so there is no one-message lag) and a
one-line status: context kind, detected fact, LR, loss, memory size, turns trained.

Ending: /quit, Ctrl+D (EOF), Ctrl+C, SIGTERM and SIGHUP (a closed terminal) end the *stream*, so
the run finishes normally: the checkpoint callbacks save adapter, fact memory and stream position at
train end, and the process exits 0. The signals go through the data module's `StopRequest`
(`olm.readers`), the one mechanism that also stops runs over logs, installed here from setup on:
a signal while waiting for input ends the input (a line already read is still trained); during a
turn it lets the turn finish and then ends. The previous handlers are restored at teardown. After
SIGHUP the terminal is gone: output goes to the null device, and the state is still saved.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from olm.callbacks.checkpoint import AdapterCheckpoint, TurnCheckpoint
from olm.data import ChatStreamDataModule
from olm.memory import FactMemory
from olm.readers import STDIN, ReaderLimits, StopRequest, decode, stdin_lines
from olm.turns import trained_turn
from olm.users import DEFAULT_USER

COMMANDS: dict[str, str] = {
    "/facts": "the fact memory as a table",
    "/stats": "the latest logged metrics",
    "/save": "save the checkpoint (last.ckpt) and the adapter now",
    "/quit": "save and exit (also Ctrl+C or Ctrl+D)",
    "/user": "/user NAME: talk as NAME from now on (per-user learning); /user alone: who you are",
    "/help": "this list",
}
FACT_COLUMNS: tuple[str, ...] = ("subject", "relation", "object", "count", "importance", "last_turn")
_EOF = object()  # end of input (read_lines yields None for an overlong line)


# ----------------------------------------------------------------------------- text (pure)
def is_command(raw: bytes | str | None) -> bool:
    """Whether an input line is a chat command (starts with ``/`` after white space)."""
    return raw is not None and decode(raw)[0].lstrip().startswith("/")


def shorten(value: Any, max_chars: int) -> str:
    """`value` as one line of at most `max_chars` characters (an ellipsis marks a cut)."""
    text = " ".join(str(value).split())
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def text_table(header: Iterable[str], rows: Iterable[Iterable[Any]], max_chars: int) -> str:
    """A plain-text table with left-aligned columns; cells are shortened to `max_chars`."""
    cells = [[shorten(c, max_chars) for c in header]] + [[shorten(c, max_chars) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


def facts_table(facts: Iterable[Any], max_rows: int, max_chars: int) -> str:
    """The stored facts (`olm.memory.StoredFact`) as a table, most important first, at most `max_rows`."""
    ranked = sorted(facts, key=lambda f: -f.importance)
    if not ranked:
        return "(no facts remembered yet)"
    rows = [[f.subject, f.relation, f.object, f.count, f"{f.importance:.2f}", f.last_turn] for f in ranked[:max_rows]]
    more = f"\n(+{len(ranked) - max_rows} more)" if len(ranked) > max_rows else ""
    return text_table(FACT_COLUMNS, rows, max_chars) + more


def stats_table(metrics: Mapping[str, Any], max_chars: int) -> str:
    """Logged metrics (``trainer.callback_metrics``: name → number or 0-d tensor) as a sorted table."""
    if not metrics:
        return "(no metrics logged yet)"
    rows = [[name, f"{float(value):.4g}"] for name, value in sorted(metrics.items())]
    return text_table(("metric", "value"), rows, max_chars)


def status_line(record: Any, memory_size: int, turns: int) -> str:
    """One line about the last turn (`OnlineLM.last`): kind, fact, LR, loss, memory size, turns trained."""
    fact = f' fact="{record.fact}"' if record.fact else ""
    return (
        f"  [{record.kind}]{fact} lr={record.lr:.2g} loss={record.loss:.4f} memory={memory_size} turns={turns}"
    )


def help_text() -> str:
    """The commands and what they do."""
    return "\n".join(f"  {name:<7} {what}" for name, what in COMMANDS.items())


# ----------------------------------------------------------------------------- the callback
class ChatCallback(Callback):
    """Interactive chat over stdin: prompt, commands, replies with a status line, graceful Ctrl+C.

    Args:
        prompt: printed (and flushed) before each line is read.
        reply_prefix: printed before each reply.
        max_rows: most facts listed by /facts.
        max_cell_chars: longer table cells are shortened.

    Raises:
        ValueError: invalid settings (all problems in one message).
    """

    def __init__(
        self, prompt: str = "you> ", reply_prefix: str = "olm> ", max_rows: int = 50, max_cell_chars: int = 40
    ) -> None:
        problems = []
        if max_rows < 1:
            problems.append(f"max_rows must be >= 1, got {max_rows!r}")
        if max_cell_chars < 8:
            problems.append(f"max_cell_chars must be >= 8, got {max_cell_chars!r}")
        if problems:
            raise ValueError("invalid ChatCallback settings: " + "; ".join(problems))
        self.prompt, self.reply_prefix = prompt, reply_prefix
        self._streamed = False
        self.max_rows, self.max_cell_chars = max_rows, max_cell_chars
        self.stop = StopRequest()  # the data module's, once attached
        self.max_line_bytes = ReaderLimits().max_record_bytes  # the data module's, once attached
        self._trainer: L.Trainer | None = None
        self._module: L.LightningModule | None = None
        self._datamodule: ChatStreamDataModule | None = None

    @property
    def stop_requested(self) -> bool:
        """Whether the chat is to end (/quit, or a signal through `stop`)."""
        return self.stop.requested

    @stop_requested.setter
    def stop_requested(self, value: bool) -> None:
        self.stop.requested = value

    @property
    def reading(self) -> bool:
        """Whether the console is waiting for input (a signal then ends the input at once)."""
        return self.stop.reading

    @property
    def _on_sigint(self) -> Any:
        """The handler installed for SIGINT, SIGTERM and SIGHUP (`StopRequest.handle`)."""
        return self.stop.handle

    # ----------------------------------------------------------------- Lightning hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer, self._module = trainer, pl_module
        datamodule = getattr(trainer, "datamodule", None)
        if stage != "fit" or not isinstance(datamodule, ChatStreamDataModule) or datamodule.source != STDIN:
            return  # reading a log: replies and status are still printed, there is nothing to type
        self.stop = datamodule.stop
        self.max_line_bytes = datamodule.config.limits.max_record_bytes
        self._datamodule = datamodule
        datamodule.use_console(self.lines)
        self.stop.install()  # from setup on, not only once reading starts: a signal meanwhile also saves

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._datamodule is None:
            return
        pl_module.reply_listener = self._stream_reply  # replies show before the step, not after it
        users = getattr(pl_module, "users", None)
        known = (f". Per-user learning: {len(users.users)} users known; you are {self.user}, /user NAME switches."
                 if users is not None else f", {len(pl_module.memory)} facts remembered.")  # fmt: skip
        self.say(
            f"olm chat: {pl_module.turns_trained} turns learned so far{known}"
            " Type a message; /help lists the commands; Ctrl+C or Ctrl+D saves and exits."
        )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        record = pl_module.last
        if not trained_turn(outputs) or record is None:
            return
        if not self._streamed:  # a reply that was not generated (or produced no text) is shown now
            self.say(f"{self.reply_prefix}{record.reply}")
        self._streamed = False
        self.say(status_line(record, len(pl_module.memory), pl_module.turns_trained))

    def _stream_reply(self, text: str, end: bool) -> None:
        """The reply as it is generated, before the learning step (the status line follows it)."""
        if not self._streamed and not text:
            return
        text = text.replace("\n", " ")
        if not self._streamed:
            self.say(self.reply_prefix, end="")
            self._streamed, text = True, text.lstrip()
        self.say(text.rstrip() if end else text, end="\n" if end else "")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._datamodule is None:
            return
        self._detach()
        where = self.saved_paths(trainer)  # the checkpoint callbacks saved at train end, before teardown
        saved = f" Saved {', '.join(where)}." if where else ""
        self.say(f"Bye: {pl_module.turns_trained} turns learned.{saved} Run the same command to continue.")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._detach()

    # ----------------------------------------------------------------- the console
    def lines(self) -> Iterator[bytes | str | None]:
        """The person's lines from stdin, without commands; ends on /quit, EOF or a stop signal.

        Prints the prompt before each read; runs commands (`run_command`) in place.
        """
        source = stdin_lines(self.max_line_bytes, self.stop)
        while not self.stop_requested:
            self.say(self.current_prompt(), end="")
            raw = self._read(source)
            if raw is _EOF:
                self.say("")  # the terminal's cursor is still after the prompt
                break
            if is_command(raw):
                self.stop_requested |= not self.run_command(decode(raw)[0].strip())
                continue
            yield raw
        self.say("Saving and exiting ...")

    def _read(self, source: Iterator[bytes | str | None]) -> Any:
        # a stop signal while waiting for input ends it (KeyboardInterrupt, see StopRequest.handle)
        return self.stop.next(source, _EOF)

    def run_command(self, line: str) -> bool:
        """Run a chat command; returns False when the chat should end (/quit).

        Args:
            line: the command line, e.g. ``/facts`` (arguments are ignored).
        """
        name = line.split()[0].lower() if line.split() else line
        if name == "/quit":
            return False
        if name == "/facts":
            self.say(facts_table(self.current_facts(), self.max_rows, self.max_cell_chars))
        elif name == "/stats":
            metrics = {**self._trainer.callback_metrics, **self._module.latest_scalars}
            self.say(stats_table(metrics, self.max_cell_chars))
        elif name == "/save":
            where = self.save_now(self._trainer, self._module)
            self.say(f"Saved {', '.join(where)}." if where else "Nothing to save: no checkpoint callbacks.")
        elif name == "/user":
            self.switch_user(line.split()[1:])
        elif name == "/help":
            self.say(help_text())
        else:
            self.say(f"Unknown command {name!r} (not learned). Commands:\n{help_text()}")
        return True

    @property
    def per_user(self) -> bool:
        """Whether the chat's stream is learned per user (``--model.per_user true``)."""
        return self._datamodule is not None and self._datamodule.config.per_user

    @property
    def user(self) -> str:
        """The user the next line is learned for (per-user learning)."""
        return (self._datamodule.user_id if self._datamodule is not None else None) or DEFAULT_USER

    def current_prompt(self) -> str:
        """The prompt: the current user's name with per-user learning (``alice> ``), else `prompt`."""
        return f"{self.user}> " if self.per_user else self.prompt

    def current_facts(self) -> list[Any]:
        """The facts /facts lists: the module's memory; with per-user learning, the current user's."""
        users = getattr(self._module, "users", None)
        if not self.per_user or users is None:
            return list(self._module.memory)
        if self.user not in users.users:
            return []
        memory = FactMemory(self._module.memory_config)
        memory.load_state_dict(users.memory_state(self.user))
        return list(memory)

    def switch_user(self, args: list[str]) -> None:
        """/user NAME: the lines from now on are NAME's; a bad name is refused with the reason."""
        if not self.per_user:
            self.say("Per-user learning is off: start the chat with --model.per_user true to use /user.")
        elif not args:
            self.say(f"You are {self.user}. /user NAME switches.")
        elif len(args) > 1:
            self.say(f"Usage: /user NAME (one word); you are still {self.user}.")
        else:
            try:
                self._datamodule.set_user(args[0])
            except ValueError as err:
                self.say(f"{err}; you are still {self.user}.")
            else:
                self.say(f"You are {self.user} now: what you say is learned for {self.user} only.")

    @staticmethod
    def save_now(trainer: L.Trainer, pl_module: L.LightningModule) -> list[str]:
        """Write the TurnCheckpoint (last.ckpt) and the AdapterCheckpoint now; returns what was written."""
        written = []
        for callback in trainer.callbacks:
            if isinstance(callback, TurnCheckpoint):
                callback.save_now(trainer)
                written.append(f"checkpoint {callback.last_model_path}")
            elif isinstance(callback, AdapterCheckpoint):
                written.append(f"adapter {callback.save(trainer, pl_module)}")
        return written

    @staticmethod
    def saved_paths(trainer: L.Trainer) -> list[str]:
        """Where the checkpoint callbacks last wrote (for the goodbye line)."""
        where = []
        for callback in trainer.callbacks:
            if isinstance(callback, TurnCheckpoint) and callback.last_model_path:
                where.append(f"checkpoint {callback.last_model_path}")
            elif isinstance(callback, AdapterCheckpoint) and callback.last_saved_turn >= 0:
                if getattr(trainer.lightning_module, "users", None) is not None:  # per-user: <dir>/<user>/v<N>
                    where.append(f"adapters {callback.users_dir(trainer)}")
                    continue
                where.append(f"adapter {callback.latest_dir(trainer) or callback.resolve_dir(trainer)}")
        return where

    @staticmethod
    def say(text: str, end: str = "\n") -> None:
        """Print to stdout and flush (a prompt must show before the read blocks); a terminal that
        is gone (EIO after a hang-up) does not keep the chat from saving."""
        try:
            print(text, end=end, file=sys.stdout, flush=True)
        except OSError:
            pass

    def _detach(self) -> None:
        self.stop.restore()
        if self._datamodule is not None:
            self._datamodule.use_console(None)
            self._datamodule = None
