"""How big is each AdamW step, per parameter, relative to the learning rate? (issue 12 diagnostic)

Runs the main job (`cli.py fit`) for a few turns with `torch.optim.AdamW.step` wrapped: before each
step it reads the (already clipped) gradients, after it the parameter change, and prints per step
the quantiles of |g| and of |Δθ| / lr over every adapter parameter. With the default eps (1e-8) the
first step moves every parameter by exactly lr (sign descent) and later ones by a large fraction of
it, whatever the gradient's size; with eps near the gradients' scale the step follows |g|.

    PYTHONPATH=. python docs/bench/facts-smollm2/search/adam_updates.py --steps 10 [-- extra cli.py args]
    PYTHONPATH=. python docs/bench/facts-smollm2/search/adam_updates.py --steps 10 -- --model.optim.eps=1e-4
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from olm.cli import main

QUANTILES = torch.tensor([0.1, 0.5, 0.9, 0.99])


def sample_quantiles(x: torch.Tensor) -> list[float]:
    """Quantiles of a large vector (torch.quantile caps its input at 16M; 1M values sampled at most)."""
    if x.numel() > 1_000_000:
        x = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    return torch.quantile(x.double(), QUANTILES.double()).tolist()


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps to report, then stop")
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("extra", nargs="*", help="further cli.py arguments (after --)")
    args = parser.parse_args()
    original, seen = torch.optim.AdamW.step, []

    def step(self, *a, **kw):
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        lr = self.param_groups[0]["lr"]
        before = [p.detach().clone() for p in params]
        grad = torch.cat([p.grad.detach().abs().flatten() for p in params])
        result = original(self, *a, **kw)
        moved = torch.cat([(p.detach() - b).abs().flatten() for p, b in zip(params, before)]) / lr
        seen.append(1)
        g, m = sample_quantiles(grad), sample_quantiles(moved)
        print(
            f"step {len(seen):3d}  lr {lr:.2e}  eps {self.param_groups[0]['eps']:.0e}  n {grad.numel()}  "
            f"|g| q10/50/90/99 {' / '.join(f'{v:.1e}' for v in g)}  "
            f"|dθ|/lr q10/50/90/99 {' / '.join(f'{v:.2f}' for v in m)}",
            flush=True,
        )
        if len(seen) >= args.steps:
            raise SystemExit(0)
        return result

    torch.optim.AdamW.step = step
    with tempfile.TemporaryDirectory() as root:
        try:
            main(["fit", "--config", args.config, f"--trainer.default_root_dir={root}", "--trainer.logger=false",
                  "--trainer.enable_progress_bar=false",
                  *args.extra])  # fmt: skip
        except SystemExit:
            pass


if __name__ == "__main__":
    main_()
