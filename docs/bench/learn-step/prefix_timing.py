"""Paired timing of OnlineLM.learn() on fact turns and chat turns (default.yaml's learning settings, smollm2-135m),
optim.share_prefix on vs off, alternating. Run: PYTHONPATH=. python docs/bench/learn-step/prefix_timing.py"""
import statistics, time, torch
torch.set_num_threads(1)
from olm.module import ObjectiveSettings, OnlineLM, OptimSettings
from olm.locality import LocalitySettings
from olm.backbone import LoRASettings
from olm.augment import AugmentSettings
from olm.context import Context
from olm.render import render_exchange
m = OnlineLM(base_model="smollm2-135m", lora=LoRASettings(r=8, alpha=16, target_modules=["gate_proj","up_proj","down_proj"], lower_fraction=0.67),
             optim=OptimSettings(lr=3e-4, steps_per_fact=2), augment=AugmentSettings(qa_pairs=3, paraphrases=1),
             locality=LocalitySettings(weight=2.0, per_step=6, null_space_energy=0.95), objective=ObjectiveSettings(loss_on="reply"))
m.optimizers = lambda: m._opt; m._opt = m.configure_optimizers(); m.manual_backward = lambda loss: loss.backward()
facts = ["Zara is my sister.", "I live in Lisbon.", "Jiameijel has a new telescope.", "My favourite colour is green."]
res = {True: [], False: []}; plain = {True: [], False: []}
m.learn([render_exchange(m.tokenizer, "hi", "hello", (), "reply")], Context("fact", fact=m.detector.detect(facts[0])))  # fill caches
for rep in range(4):
    for s in facts:
        f = m.detector.detect(s)
        ex = [render_exchange(m.tokenizer, s, "Got it.", (), "reply")] + m.fact_examples(f, rep, s)
        for share in ((True, False) if rep % 2 else (False, True)):
            m.optim.share_prefix = share
            t = time.perf_counter(); m.learn(ex, Context("fact", fact=f)); res[share].append(time.perf_counter() - t)
            t = time.perf_counter(); m.learn([render_exchange(m.tokenizer, "How are you today?", "I am fine, thanks for asking!", (), "reply")], Context("chat")); plain[share].append(time.perf_counter() - t)
for share in (False, True):
    print(f"share_prefix={share}: fact learn() median {statistics.median(res[share]):.2f} s, chat learn() median {statistics.median(plain[share]):.3f} s, ratio {statistics.median(res[share])/statistics.median(plain[share]):.1f}x")
print(f"fact learn() on/off: {statistics.median(res[True])/statistics.median(res[False]):.2f}")
