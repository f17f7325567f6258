"""olm's benchmarks, one module per subcommand of ``python -m olm.bench``.

- ``speed`` (`olm.bench.speed`): per-turn cost of OnlineLM against a minimal hand-written PyTorch
  loop doing the same arithmetic; memory against the base weights; flatness over thousands of turns.
"""
