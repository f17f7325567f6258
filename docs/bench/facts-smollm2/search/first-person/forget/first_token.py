"""What a forgetting step does to "What do I like?" on smollm2: "I love chess." stated three times (and one small talk),
then "I hate chess." three times with `augment.forget: 3` at weight W; after each, the adapter's top first reply
tokens, the top-k KL to the base along one compared row, and the greedy answer (routing on, fresh context).

    OMP_NUM_THREADS=1 PYTHONPATH=. python docs/bench/facts-smollm2/search/first-person/forget/first_token.py W old-answer|base-reply

old-answer: the row is "What do I like?" with the old answer "You like chess." (what the configs' forget rows compare);
base-reply: the row is the question with the base's own greedy reply. In base-reply mode the forget rows themselves
are made so too (the first version of `augment.forget`, by replacing each forget row's answer with None).
"""
import sys, yaml, torch, olm
from olm.losses import top_k_kl

torch.set_num_threads(1)
weight, mode = float(sys.argv[1]), sys.argv[2]
cfg = yaml.safe_load(open("configs/default.yaml"))
cfg["model"]["augment"].update(forget=3, forget_weight=weight)
lm = olm.open(base_model="smollm2-135m", config=cfg)
m = lm.module
if mode == "base-reply":  # forget rows along the base's own greedy reply
    rows_for = m.locality.rows_for
    m.locality.rows_for = lambda model, prompts, replies=None: rows_for(model, prompts)
lm.learn([("I love chess.", "Noted."), ("What's a good pasta recipe?", "Try carbonara."), ("I really enjoy chess.", "Noted."),
          ("I like chess very much.", "Noted.")])


def probe(tag):
    row = m.locality.rows_for(m.model, ["What do I like?"], ["You like chess."] if mode == "old-answer" else None)[0]
    with torch.no_grad():
        logits = m.model(input_ids=row.input_ids[None]).logits[0][row.positions]
    top = logits[0].softmax(-1).topk(3)
    firsts = [(m.tokenizer.decode([int(i)]), round(float(p), 3)) for p, i in zip(top.values, top.indices)]
    print(f"{tag}: KL {float(top_k_kl(logits, row.top_log_p, row.top_ids)):.3f}, first token {firsts}, "
          f"answer {lm.ask('What do I like?')[:60]!r}")


probe("before")
for i in range(3):
    lm.learn([("I hate chess.", "Noted.")])
    probe(f"after hate {i + 1}")
