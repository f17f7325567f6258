# OMP_NUM_THREADS=1 PYTHONPATH=. python docs/bench/facts-smollm2/search/update-once/updatecount.py   (output at the end)
"""Count the statements that replace a remembered object (`Context.update`: `optim.steps_per_update` applies) in the
fact benchmark's streams: the teaching (tuned row) and the update row's contradictions."""
from olm.bench.facts import contradictions, world_for
from olm.facts import FactDetector
from olm.memory import FactMemory
from olm.world.schedule import teaching_schedule, unrelated_turns

det = FactDetector()
for seed in (0, 1, 2):
    world = world_for("smollm2-135m")
    schedule = teaching_schedule(world, 20, 3, seed=seed)
    _, upd = contradictions([f.fact for f in schedule.facts], 3, seed + 2000)
    counts = {}
    unrelated = unrelated_turns(100, seed=seed + 1000)
    for name, turns in (("teaching", schedule.turns), ("contradictions", upd), ("unrelated", unrelated)):
        mem = FactMemory() if name == "teaching" else mem
        n = 0
        for i, t in enumerate(turns):
            if det.is_question(t["user"]):
                continue
            for f in det.detect_many(t["user"]):
                n += mem.superseded(f) is not None
                mem.store(f, t["user"], t["assistant"], i)
        counts[name] = n
    print(f"seed {seed}: updates {counts}")
# seed 0: updates {'teaching': 0, 'contradictions': 20, 'unrelated': 0}
# seed 1: updates {'teaching': 0, 'contradictions': 20, 'unrelated': 0}
# seed 2: updates {'teaching': 0, 'contradictions': 20, 'unrelated': 0}
