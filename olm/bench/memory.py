"""Memory figures of the speed benchmark: resident set size (current and peak) and how many copies
of the base weights live in the process (one: the adapter is toggled, never a second model)."""

from __future__ import annotations

import gc
import os
import resource
import sys
import warnings
from pathlib import Path

import torch


def current_rss() -> int:
    """Resident set size of this process now, in bytes (Linux /proc; else the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss()


def peak_rss() -> int:
    """Peak resident set size of this process, in bytes: since the last `reset_peak_rss` (Linux
    VmHWM), else over the process's life."""
    hwm = next((line.split()[1] for line in read_lines("/proc/self/status") if line.startswith("VmHWM:")), None)
    if hwm is not None:
        return int(hwm) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def reset_peak_rss() -> bool:
    """Restart `peak_rss` from the current RSS (Linux >= 4.0); returns whether it could."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def tensor_storages(tensors) -> dict[int, int]:
    """data_ptr → nbytes of the distinct storages behind `tensors` (meta tensors skipped)."""
    out = {}
    for t in tensors:
        if t.device.type != "meta":
            storage = t.untyped_storage()
            out[storage.data_ptr()] = storage.nbytes()
    return out


def base_weights(model) -> dict[int, int]:
    """Distinct storages (data_ptr → bytes) of the base (non-LoRA) parameters of a peft model."""
    return tensor_storages(p for n, p in model.named_parameters() if "lora_" not in n)


def base_copies(model) -> float:
    """Live copies of the base weight matrices: bytes of distinct live tensor storages shaped like a
    base weight matrix / bytes of the base weight matrices (1.0 = one copy)."""
    mats = [p for n, p in model.named_parameters() if "lora_" not in n and p.dim() == 2]
    shapes = {(tuple(p.shape), p.dtype) for p in mats}
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on deprecated torch objects found by gc warns
        warnings.simplefilter("ignore")
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    live = tensor_storages(t for t in tensors if t.dim() == 2 and (tuple(t.shape), t.dtype) in shapes)
    return sum(live.values()) / sum(tensor_storages(mats).values())


def read_lines(path: str) -> list[str]:
    """Lines of a text file (e.g. under /proc), or [] when it cannot be read."""
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []
