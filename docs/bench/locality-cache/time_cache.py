"""Time the locality cache and the null-space projectors on smollm2-135m: computed, then read from disk.

    PYTHONPATH=. python docs/bench/locality-cache/time_cache.py [--threads 1]

Two fresh models in one process, configs/default.yaml's adapter (MLP LoRA, lower 2/3 of the blocks) and
locality settings with null_space_energy 0.95, a temporary $OLM_CACHE (the model itself is resolved first).
"""

import argparse
import os
import tempfile
import time

import torch

from olm.backbone import LoRASettings, resolve_model_path
from olm.locality import LocalitySettings
from olm.module import OnlineLM

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=1)
args = p.parse_args()
torch.set_num_threads(args.threads)
model_dir = str(resolve_model_path("smollm2-135m"))
os.environ["OLM_CACHE"] = tempfile.mkdtemp(prefix="olm-cache-")
for run in ("computed", "from disk"):
    m = OnlineLM(base_model=model_dir,
                 lora=LoRASettings(r=8, alpha=16, target_modules=["gate_proj", "up_proj", "down_proj"], lower_fraction=0.67),
                 locality=LocalitySettings(weight=2.0, per_step=6, null_space_energy=0.95))  # fmt: skip
    t = time.perf_counter()
    m.locality.next_rows(m.model)
    rows = time.perf_counter() - t
    t = time.perf_counter()
    projectors = m.locality.projectors(m.model)
    print(f"{run}: locality rows {rows:.1f} s, projectors {time.perf_counter() - t:.1f} s "
          f"({len(projectors)} layers, {len({id(v) for v in projectors.values()})} distinct)", flush=True)
