"""Versioned adapter directories: each save is a new complete PEFT directory, then a pointer flips.

    <root>/v1/  v2/  v3/           complete PEFT directories (adapter_config.json, adapter_model.safetensors, ...)
    <root>/latest -> v3            a relative symlink, replaced atomically (os.replace of a new link)
    <root>/LATEST                  "v3\\n", written atomically: the same pointer where symlinks are not
                                   available (some filesystems, object stores, Windows without privilege)

Why versions instead of rewriting one directory: a server must load each new adapter under a new
path and name. vLLM's in-place LoRA reload (same ``lora_name``) keeps serving prefix-cache entries
computed with the old weights; loading ``alice-v7`` from ``.../alice/v7`` never can (docs/serving.md).

`publish_adapter` writes ``v<N+1>`` beside the others as ``v<N+1>.olm-tmp-<pid>`` (fsynced, renamed:
a reader never sees a partial version), flips ``latest`` then ``LATEST`` (each: a temporary name in
the root, then ``os.replace``), and prunes all but the newest `keep` versions; a version either
pointer names is never deleted. After a crash the root holds whole versions only (temporary names
are cleared by `olm.durable.remove_orphans`, called on every publish) and both pointers name whole
versions (possibly the previous one).

`resolve_adapter_dir` is what every reader calls: a version root gives the version its pointers
name (the newer of the two, should a crash have left them apart), a plain PEFT directory (a
version directory, ``latest`` itself, an adapter from elsewhere) gives itself.

`vllm_compatibility_problems` checks a directory against what vLLM's LoRA loader accepts, without vLLM.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from olm.durable import atomic_write, fsync_dir, fsync_tree, remove_orphans, replace, temp_path
from olm.errors import RunError

log = logging.getLogger(__name__)

LATEST_LINK = "latest"
"""In a version root: the relative symlink to the newest version (``latest -> v3``)."""
LATEST_FILE = "LATEST"
"""In a version root: a text file naming the newest version (``v3``), for tools without symlinks."""
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_VERSION = re.compile(r"v([1-9][0-9]*)")


class AdapterDirError(RunError, FileNotFoundError):
    """A path that is neither a PEFT adapter directory nor a version root holding one."""


def version_number(name: str) -> int | None:
    """N for a version directory's name ``vN`` (N >= 1), else None."""
    m = _VERSION.fullmatch(name)
    return int(m.group(1)) if m else None


def versions(root: str | Path) -> list[Path]:
    """The version directories ``v<N>`` in `root`, oldest (lowest N) first (temporary ones excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        (n, p) for p in root.iterdir()
        if (n := version_number(p.name)) is not None and p.is_dir() and not p.is_symlink()
    ]  # fmt: skip
    return [p for _, p in sorted(found)]


def _pointer_names(root: Path) -> list[str]:
    """The version names the ``latest`` symlink and the ``LATEST`` file give (valid names only)."""
    names = []
    link = root / LATEST_LINK
    if link.is_symlink():
        with suppress(OSError):
            names.append(Path(os.readlink(link)).name)
    with suppress(OSError, UnicodeDecodeError):
        names.append((root / LATEST_FILE).read_text(encoding="utf-8").strip())
    return [n for n in names if version_number(n) is not None]


def _is_adapter(path: Path) -> bool:
    return (path / CONFIG).is_file()


def latest_version(root: str | Path) -> Path | None:
    """The version `root`'s pointers name (the higher N when they differ), if it is a whole adapter."""
    root = Path(root)
    named = sorted({n for n in _pointer_names(root)}, key=version_number, reverse=True)
    return next((root / n for n in named if _is_adapter(root / n)), None)


def is_version_root(path: str | Path) -> bool:
    """Whether `path` holds a ``latest``/``LATEST`` pointer or version directories (`publish_adapter`'s layout)."""
    path = Path(path)
    return (path / LATEST_LINK).is_symlink() or (path / LATEST_FILE).is_file() or bool(versions(path))


def resolve_adapter_dir(path: str | Path) -> Path:
    """The PEFT adapter directory `path` stands for.

    A version root (``latest`` symlink and/or ``LATEST`` file) gives the version they name (the newer
    one if they differ); a root whose pointers are missing or name no whole version gives its newest
    whole version (with a warning); a directory holding ``adapter_config.json`` gives itself.

    Raises:
        AdapterDirError: `path` is none of these (missing, empty, an unrelated directory).
    """
    path = Path(path)
    if not path.is_dir():
        raise AdapterDirError(f"adapter directory {str(path)!r} does not exist")
    if is_version_root(path):
        found = latest_version(path)
        if found is not None:
            return found
        whole = [v for v in versions(path) if _is_adapter(v)]
        if whole:
            log.warning("%s: no usable %s/%s pointer; using the newest version %s", path, LATEST_LINK, LATEST_FILE, whole[-1].name)
            return whole[-1]
        raise AdapterDirError(f"{str(path)!r} is a versioned adapter directory without any whole version (v<N>/{CONFIG})")
    if _is_adapter(path):
        return path
    raise AdapterDirError(
        f"{str(path)!r} is not an adapter directory: no {CONFIG}, and no {LATEST_LINK}/{LATEST_FILE} "
        "pointer to a version (v<N>/)"
    )


def next_version(root: str | Path) -> int:
    """The N for the next version: one past every version present or named by a pointer."""
    root = Path(root)
    numbers = [version_number(p.name) or 0 for p in versions(root)]
    numbers += [version_number(n) or 0 for n in _pointer_names(root)]
    return max(numbers, default=0) + 1


def save_flat(peft_model: Any, adapter_name: str, directory: str | Path) -> None:
    """``peft_model.save_pretrained`` of the one adapter `adapter_name`, its files directly in `directory`.

    PEFT writes an adapter other than ``"default"`` into ``<directory>/<adapter_name>/`` (its model
    card stays in `directory`); vLLM and ``PeftModel.from_pretrained(base, directory)`` want the
    files at the top, so they are moved up. The tensor names never hold the adapter name (PEFT's
    ``get_peft_model_state_dict`` strips it).
    """
    directory = Path(directory)
    scratch = directory / ".peft-save"
    shutil.rmtree(scratch, ignore_errors=True)
    peft_model.save_pretrained(str(scratch), selected_adapters=[adapter_name])
    source = scratch if adapter_name == "default" else scratch / adapter_name
    if not (source / CONFIG).is_file():
        raise RuntimeError(f"peft wrote no {CONFIG} for adapter {adapter_name!r} under {scratch}")
    for item in source.iterdir():
        if item.is_file():
            os.replace(item, directory / item.name)
    card = scratch / "README.md"
    if card.is_file() and not (directory / "README.md").exists():
        os.replace(card, directory / "README.md")
    shutil.rmtree(scratch)


def _set_pointers(root: Path, name: str) -> None:
    """Point ``latest`` (symlink, when the filesystem has them) and ``LATEST`` at version `name`, each atomically."""
    link, tmp_link = root / LATEST_LINK, temp_path(root / LATEST_LINK)
    if link.exists() and not link.is_symlink():
        raise RunError(f"{link} is not a symlink: move it away so that olm can point it at the newest version")
    with suppress(FileNotFoundError):
        tmp_link.unlink()
    try:
        os.symlink(name, tmp_link, target_is_directory=True)
    except (OSError, NotImplementedError) as err:  # no symlinks here: LATEST alone points
        log.debug("no %s symlink in %s (%s); %s alone names the newest version", LATEST_LINK, root, err, LATEST_FILE)
    else:
        os.replace(tmp_link, link)
    atomic_write(root / LATEST_FILE, lambda fh: fh.write(f"{name}\n".encode()))
    fsync_dir(root)


def prune_versions(root: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` versions in `root`, never one a pointer names; returns those deleted.

    Each is renamed to a temporary name first, so a crash mid-delete leaves no partial ``v<N>``.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep!r}")
    root = Path(root)
    protected = set(_pointer_names(root))
    present = versions(root)
    doomed = [v for v in present[: max(0, len(present) - keep)] if v.name not in protected]
    for version in doomed:
        gone = temp_path(version)
        shutil.rmtree(gone, ignore_errors=True)
        replace(version, gone)
        shutil.rmtree(gone, ignore_errors=True)
    return doomed


def publish_adapter(
    peft_model: Any,
    adapter_name: str,
    root: str | Path,
    write_extra: Callable[[Path], None] | None = None,
    keep: int = 3,
) -> Path:
    """Write adapter `adapter_name` of `peft_model` as a new version of `root` and point ``latest`` at it.

    Args:
        peft_model: a ``peft.PeftModel`` (any object with PEFT's ``save_pretrained``).
        adapter_name: the PEFT adapter to save (``"default"`` for a single adapter).
        root: the version root (created if missing), e.g. ``<log_dir>/adapter`` or ``<log_dir>/adapters/<user>``.
        write_extra: called with the (temporary) version directory after PEFT's files are written, to
            add more (memory.json, tokenizer, card, olm_state.json); part of the same atomic publish.
        keep: versions kept (>= 1); older ones are deleted, never one a pointer names.

    Returns:
        The new version directory ``<root>/v<N>``.

    Raises:
        ValueError: `keep` < 1.
        RunError: `root` holds an unversioned adapter (``adapter_config.json`` at its top) or a
            ``latest`` that is not a symlink.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep!r}")
    root = Path(root)
    if _is_adapter(root):
        raise RunError(
            f"{root} holds an unversioned adapter (written before olm versioned them): move it away, or "
            "save to another directory; olm now writes <dir>/v<N>/ with a 'latest' pointer"
        )
    root.mkdir(parents=True, exist_ok=True)
    remove_orphans(root, depth=1)  # temporary versions / pointers of a killed writer
    final = root / f"v{next_version(root)}"
    tmp = temp_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_flat(peft_model, adapter_name, tmp)
        if write_extra is not None:
            write_extra(tmp)
        fsync_tree(tmp)
        replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _set_pointers(root, final.name)
    prune_versions(root, keep)
    return final


# --------------------------------------------------------------------------- what vLLM's LoRA loader accepts
#
# Read from vLLM's source (github.com/vllm-project/vllm), the versions stored for this check:
# - vllm/lora/peft_helper.py (PEFTHelper, commit e745baf): adapter_config.json must hold ``r``,
#   ``lora_alpha``, ``target_modules`` (`from_dict`: "Missing required configuration fields"); every
#   other key it does not know is dropped — ``layers_to_transform``, ``rank_pattern``,
#   ``alpha_pattern``, ``lora_dropout`` ... are never read; `_validate_features` rejects a non-empty
#   ``modules_to_save`` and ``use_dora``; `validate_legal` rejects ``r`` > ``--max-lora-rank`` and
#   ``bias`` != "none" ("Adapter bias is not supported." in later versions); scaling is
#   ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``) for every module.
# - vllm/config/lora.py (commit a78dc92): ``--max-lora-rank`` is one of 1, 8, 16, 32, 64, 128, 256, 320, 512.
# - vllm/lora/lora_model.py (LoRAModel.from_local_checkpoint, commit 532cc25): reads
#   ``adapter_model.safetensors`` (else .bin / .pt); the tensor *names* are the source of truth for
#   which modules are adapted; each goes through `parse_fine_tuned_lora_name`.
# - vllm/lora/utils.py (parse_fine_tuned_lora_name, commit 0fd1570): a name is
#   ``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight`` (or ``lora_embedding_A`` /
#   ``_B``); anything else — an adapter name inside (``lora_A.alice.weight``), a bias, DoRA's
#   ``lora_magnitude_vector`` — raises "... is unsupported LoRA weight".
# - vllm/lora/model_manager.py (activate_adapter, commit bb1d76e): a module with no tensors in the
#   adapter gets `reset_lora` (no update). So ``layers_to_transform`` (olm's ``lora.lower_fraction`` /
#   ``lora.layers``) is ignored as a key but honoured in effect: PEFT writes tensors only for the
#   adapted blocks, and the other blocks run the base weights, as in PEFT.

VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM's ``--max-lora-rank`` takes (vllm/config/lora.py, ``MaxLoRARanks``)."""
VLLM_REQUIRED_KEYS = ("r", "lora_alpha", "target_modules")
_LORA_SUFFIXES = {("lora_A", "weight"): "A", ("lora_B", "weight"): "B"}
_EMBEDDING_SUFFIXES = {"lora_embedding_A": "A", "lora_embedding_B": "B"}


def vllm_max_lora_rank(r: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts for an adapter of rank `r`."""
    return next(v for v in VLLM_MAX_LORA_RANKS if v >= r) if r <= VLLM_MAX_LORA_RANKS[-1] else r


def _vllm_module(name: str) -> tuple[str, str] | None:
    """(module path, "A"/"B") of a tensor name as vLLM's `parse_fine_tuned_lora_name` reads it; None: it raises."""
    parts = name.split(".")
    start = 2 if name.startswith("base_model.model.") else 0
    if len(parts) >= 2 and (kind := _LORA_SUFFIXES.get((parts[-2], parts[-1]))):
        return ".".join(parts[start:-2]), kind
    if parts[-1] in _EMBEDDING_SUFFIXES:
        return ".".join(parts[start:-1]), _EMBEDDING_SUFFIXES[parts[-1]]
    return None


def vllm_compatibility_problems(path: str | Path) -> list[str]:
    """Why vLLM's LoRA loader would refuse (or misread) the adapter in `path`; [] when it accepts it.

    `path` may be a version root (its latest version is checked). Checks adapter_config.json (the
    keys vLLM requires, the features it rejects, ``r`` within ``--max-lora-rank``'s range, per-module
    ranks or alphas it would ignore) and adapter_model.safetensors (every tensor name one vLLM parses,
    ``base_model.model.`` prefixed, both A and B for each module, shapes of rank ``r``, modules among
    ``target_modules``). The rules and where in vLLM they come from: the comment above.
    """
    from safetensors import safe_open

    try:
        path = resolve_adapter_dir(path)
    except AdapterDirError as err:
        return [str(err)]
    problems: list[str] = []
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return [f"{CONFIG} does not load: {err}"]
    if not isinstance(config, dict):
        return [f"{CONFIG} is not a JSON object"]
    if missing := [k for k in VLLM_REQUIRED_KEYS if k not in config]:
        problems.append(f"{CONFIG} lacks {missing} (vLLM requires {list(VLLM_REQUIRED_KEYS)})")
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type is {config['peft_type']!r}: vLLM serves LoRA adapters only")
    r = config.get("r")
    if "r" in config and not (isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= VLLM_MAX_LORA_RANKS[-1]):
        problems.append(f"r is {r!r}: vLLM takes an integer rank from 1 to {VLLM_MAX_LORA_RANKS[-1]} (--max-lora-rank)")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save is {config['modules_to_save']!r}: vLLM only supports none")
    if config.get("use_dora"):
        problems.append("use_dora is set: vLLM does not support DoRA")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config['bias']!r}: vLLM supports no adapter bias (bias must be 'none')")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            problems.append(f"{key} is set: vLLM ignores it and scales every module by lora_alpha / r")
    weights = path / WEIGHTS
    if not weights.is_file():
        return [*problems, f"no {WEIGHTS} in {path}"]
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported
        return [*problems, f"{WEIGHTS} does not load: {type(err).__name__}: {err}"]
    if not shapes:
        problems.append(f"{WEIGHTS} holds no tensor")
    targets = config.get("target_modules")
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in sorted(shapes.items()):
        parsed = _vllm_module(name)
        if parsed is None:
            problems.append(f"tensor {name!r}: vLLM reads only <module>.lora_A.weight / lora_B.weight names (an adapter name inside, a bias, DoRA's magnitude?)")
            continue
        if not name.startswith("base_model.model."):
            problems.append(f"tensor {name!r} does not start with 'base_model.model.' (PEFT's prefix, which vLLM strips)")
        module, kind = parsed
        modules.setdefault(module, {})[kind] = shape
    for module, parts in modules.items():
        if set(parts) != {"A", "B"}:
            problems.append(f"module {module!r} has lora_{''.join(parts)} only: vLLM needs both lora_A and lora_B")
            continue
        if isinstance(r, int) and not config.get("rank_pattern") and (parts["A"][0] != r or parts["B"][-1] != r):
            problems.append(f"module {module!r}: lora_A {parts['A']} / lora_B {parts['B']} are not of rank r={r}")
        if isinstance(targets, list) and module.rsplit(".", 1)[-1] not in targets:
            problems.append(f"module {module!r} is not among target_modules {targets}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """``python -m olm.publish DIR...``: print each directory's `vllm_compatibility_problems`; exit 1 if any."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m olm.publish", description="Check adapter directories against vLLM's LoRA loader.")
    parser.add_argument("dirs", nargs="+", help="a version root olm wrote (its latest version is checked) or a PEFT directory")
    args = parser.parse_args(argv)
    bad = 0
    for directory in args.dirs:
        problems = vllm_compatibility_problems(directory)
        try:
            shown = resolve_adapter_dir(directory)
        except AdapterDirError:
            shown = Path(directory)
        print(f"{shown}: " + ("ok" if not problems else "\n  - ".join(["vLLM would refuse it:", *problems])))
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
