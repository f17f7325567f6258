"""Where a fact turn's learn() time goes (default.yaml's learning settings, smollm2-135m, 1 thread): medians of 12 fact
turns and 12 chat turns, alternating, with OnlineLM's phase timers. Run: PYTHONPATH=. python docs/bench/learn-step/phases.py"""
import statistics, time, torch, collections
torch.set_num_threads(1)
from olm.module import ObjectiveSettings, OnlineLM, OptimSettings
from olm.locality import LocalitySettings
from olm.backbone import LoRASettings
from olm.augment import AugmentSettings
from olm.context import Context
from olm.render import render_exchange
m = OnlineLM(base_model="smollm2-135m", lora=LoRASettings(r=8, alpha=16, target_modules=["gate_proj","up_proj","down_proj"], lower_fraction=0.67),
             optim=OptimSettings(lr=3e-4, steps_per_fact=2), augment=AugmentSettings(qa_pairs=3, paraphrases=1, acknowledgement="{answer}"),
             locality=LocalitySettings(weight=2.0, per_step=6, null_space_energy=0.95), objective=ObjectiveSettings(loss_on="reply"))
m.optimizers = lambda: m._opt; m._opt = m.configure_optimizers(); m.manual_backward = lambda loss: loss.backward()
facts = ["Zara is my sister.", "I live in Lisbon.", "Jiameijel has a new telescope.", "My favourite colour is green."]
m.learn([render_exchange(m.tokenizer, "hi", "hello", (), "reply")], Context("fact", fact=m.detector.detect(facts[0])))
ft, pt = [], []; ph = collections.defaultdict(list); pph = collections.defaultdict(list)
for rep in range(3):
    for s in facts:
        f = m.detector.detect(s)
        ex = [render_exchange(m.tokenizer, s, "Got it.", (), "reply")] + m.fact_examples(f, rep, s)
        if rep == 0 and s == facts[0]: print("fact rows tokens", [e.num_tokens for e in ex])
        m._timings.clear(); t = time.perf_counter(); m.learn(ex, Context("fact", fact=f)); ft.append(time.perf_counter() - t)
        for k, v in m._timings.items(): ph[k].append(v)
        m._timings.clear(); t = time.perf_counter(); m.learn([render_exchange(m.tokenizer, "How are you today?", "I am fine, thanks for asking!", (), "reply")], Context("chat")); pt.append(time.perf_counter() - t)
        for k, v in m._timings.items(): pph[k].append(v)
print(f"fact {statistics.median(ft):.3f}s plain {statistics.median(pt):.3f}s ratio {statistics.median(ft)/statistics.median(pt):.1f}")
print("fact phases", {k: round(statistics.median(v), 3) for k, v in ph.items()})
print("plain phases", {k: round(statistics.median(v), 3) for k, v in pph.items()})
rows = m.locality.next_rows(m.model); print("loc rows", len(rows))
