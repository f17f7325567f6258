"""The locality term's LM head at the read positions only (`shared_prefix_forward(..., positions)`) against the
full-logits forward it replaced (every position's logits, then indexed): a fact turn's learn() time, alternating
the two on the same fact turns, with a chat turn's learn() between for the fact/plain ratio. default.yaml's learning
settings, smollm2-135m, 1 thread. Run: PYTHONPATH=. python docs/bench/learn-step/head_timing.py"""
import statistics, time, torch
torch.set_num_threads(1)
import olm.module
from olm.module import ObjectiveSettings, OnlineLM, OptimSettings
from olm.locality import LocalitySettings
from olm.backbone import LoRASettings
from olm.augment import AugmentSettings
from olm.context import Context
from olm.render import render_exchange
from olm.prefix import shared_prefix_forward

def full_logits(model, ids, attention, enabled=True, positions=None):  # the code before: every position's logits
    logits = shared_prefix_forward(model, ids, attention, enabled)
    return logits if positions is None else logits[positions]

m = OnlineLM(base_model="smollm2-135m", lora=LoRASettings(r=8, alpha=16, target_modules=["gate_proj","up_proj","down_proj"], lower_fraction=0.67),
             optim=OptimSettings(lr=3e-4, steps_per_fact=2), augment=AugmentSettings(qa_pairs=3, paraphrases=1, acknowledgement="{answer}"),
             locality=LocalitySettings(weight=2.0, per_step=6, null_space_energy=0.95), objective=ObjectiveSettings(loss_on="reply"))
m.optimizers = lambda: m._opt; m._opt = m.configure_optimizers(); m.manual_backward = lambda loss: loss.backward()
facts = ["Zara is my sister.", "I live in Lisbon.", "Jiameijel has a new telescope.", "My favourite colour is green."]
chat = [render_exchange(m.tokenizer, "How are you today?", "I am fine, thanks for asking!", (), "reply")]
m.learn(chat, Context("fact", fact=m.detector.detect(facts[0])))  # warm-up (locality cache filled)
times = {"positions": [], "full": [], "plain": []}
for rep in range(3):
    for s in facts:
        f = m.detector.detect(s)
        ex = [render_exchange(m.tokenizer, s, "Got it.", (), "reply")] + m.fact_examples(f, rep, s)
        for arm, forward in (("positions", shared_prefix_forward), ("full", full_logits)):
            olm.module.shared_prefix_forward = forward
            t = time.perf_counter(); m.learn(ex, Context("fact", fact=f)); times[arm].append(time.perf_counter() - t)
        olm.module.shared_prefix_forward = shared_prefix_forward
        t = time.perf_counter(); m.learn(chat, Context("chat")); times["plain"].append(time.perf_counter() - t)
med = {k: statistics.median(v) for k, v in times.items()}
print(f"fact turn learn(), medians of {len(times['plain'])}: head at the read positions {med['positions']:.3f}s, "
      f"full logits {med['full']:.3f}s (ratio {med['positions'] / med['full']:.3f}); chat turn {med['plain']:.3f}s")
print(f"fact/plain: {med['positions'] / med['plain']:.1f}x (read positions) vs {med['full'] / med['plain']:.1f}x (full logits)")
