# OMP_NUM_THREADS=1 PYTHONPATH=. python docs/bench/facts-smollm2/search/first-person/forget/heircount.py   (output at the end)
"""Count the contradictions that leave a heir (augment.heir_steps would fire) in the fact benchmark's streams."""
from olm.bench.facts import contradictions, world_for
from olm.facts import FactDetector
from olm.memory import FactMemory
from olm.world.schedule import teaching_schedule, unrelated_turns

det = FactDetector()
for seed in (0, 1, 2):
    world = world_for("smollm2-135m")
    schedule = teaching_schedule(world, 20, 3, seed=seed)
    _, upd = contradictions([f.fact for f in schedule.facts], 3, seed + 2000)
    mem, drops, heirs, facts = FactMemory(), 0, 0, 0
    for i, t in enumerate([*schedule.turns, *upd, *unrelated_turns(100, seed=seed + 1000)]):
        if det.is_question(t["user"]):
            continue
        for f in det.detect_many(t["user"]):
            facts += 1
            d = mem.drop_contradicted(f)
            if d is not None:
                drops += 1
                slot = d.slot or d.relation
                heirs += any((g.key[0], g.slot or g.relation) == (d.key[0], slot) for g in mem)
            mem.store(f, t["user"], t["assistant"], i)
    print(f"seed {seed}: {facts} detections, {drops} contradictions, {heirs} with a heir")
# seed 0: 120 detections, 0 contradictions, 0 with a heir
# seed 1: 120 detections, 0 contradictions, 0 with a heir
# seed 2: 120 detections, 0 contradictions, 0 with a heir
