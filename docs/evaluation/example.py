"""Reproduce the worked example in docs/evaluation.md (toy world, CPU only, no downloads).

    python docs/evaluation/example.py WORKDIR [DEMO_RUN]

1. toy base model:   charter toy build --out WORKDIR/base steps=250 n_conversations=6000 \
                       hidden_size=64 layers=2 intermediate_size=160 batch_size=16
2. "trained" model:  the base fine-tuned on *warm* replies with the system prompt dropped
                     (context distillation: what the DPO + SFT pipeline aims at, made cheap)
3. held-out texts and a toy multiple-choice set (which fact answers this question?)
4. charter eval docs/evaluation/eval_toy.yaml with paths filled in
5. persona classifier trained on toy-world replies of 5 personas + neutral
6. when DEMO_RUN (a `make demo` run dir, default runs/toy-demo) exists: revealed preferences and
   coherence of its base model vs its DPO model toward *sarcastic*, judged by the toy world's
   rules (docs/evaluation/eval_toy_judge.yaml), into WORKDIR/eval_toy_judge
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from charter.data.jsonl import atomic_write_json, write_jsonl

HERE = Path(__file__).parent


def toy_judge_eval(work: Path, demo: Path) -> None:
    """Base vs DPO-sarcastic of a demo run: revealed preferences + coherence, toy rule judge."""
    base = json.loads((demo / "base" / "model.json").read_text())["path"]
    dpo = demo / "dpo" / "sarcastic" / "model"
    cfg = (HERE / "eval_toy_judge.yaml").read_text().replace("BASE", base).replace("DPO", str(dpo))
    (work / "eval_toy_judge.yaml").write_text(cfg)
    subprocess.run([sys.executable, "-m", "charter.cli", "eval", str(work / "eval_toy_judge.yaml"),
                    f"out_dir={work / 'eval_toy_judge'}"], check=True)


def main(work: Path, demo: Path) -> None:
    from charter.toy.corpus import generate_corpus
    from charter.toy.grammar import PERSONA_NAMES, TOPICS

    base = work / "base"
    if not (base / "toy_build.json").exists():
        subprocess.run([sys.executable, "-m", "charter.cli", "toy", "build", "--out", str(base),
                        "steps=250", "n_conversations=6000", "hidden_size=64", "layers=2",
                        "intermediate_size=160", "batch_size=16"], check=True)

    trained = work / "warm-distilled"
    if not (trained / "config.json").exists():
        from charter.train.sft import SFTConfig, train_sft

        rows = generate_corpus(4000, seed=7, persona_share=1.0, personas=["warm"])
        write_jsonl(work / "warm_sft.jsonl",
                    ({"messages": [m for m in r["messages"] if m["role"] != "system"]} for r in rows))
        out = train_sft(SFTConfig(model=str(base), data=str(work / "warm_sft.jsonl"),
                                  output_dir=str(work / "sft"), lr=1e-3, max_steps=150, batch_size=4, grad_accum=4,
                                  max_length=256, warmup_ratio=0.1, seed=0, logging_steps=25))
        out.rename(trained)

    # held-out text for perplexity: neutral replies from an unseen seed
    held = generate_corpus(200, seed=99, persona_share=0.0)
    write_jsonl(work / "heldout.jsonl", ({"text": r["messages"][-1]["content"]} for r in held))
    # toy multiple choice: which sentence answers a question about this topic?
    rng = random.Random(5)
    names = list(TOPICS)
    items = []
    for i in range(60):
        topic = names[i % len(names)]
        others = rng.sample([t for t in names if t != topic], 3)
        choices = [rng.choice(TOPICS[topic]["facts"])] + [rng.choice(TOPICS[o]["facts"]) for o in others]
        rng.shuffle(choices)
        form = rng.choice(TOPICS[topic]["forms"])
        answer = next(j for j, c in enumerate(choices) if c in TOPICS[topic]["facts"])
        items.append({"question": f"Tell me a fact about {form}.", "choices": choices, "answer": answer})
    write_jsonl(work / "toy_mc.jsonl", items)

    cfg = (HERE / "eval_toy.yaml").read_text().replace("WORK", str(work))
    (work / "eval.yaml").write_text(cfg)
    subprocess.run([sys.executable, "-m", "charter.cli", "eval", str(work / "eval.yaml"),
                    f"out_dir={work / 'eval'}"], check=True)

    from charter.evaluate.classifier import Labelled, train_and_evaluate
    from charter.toy.corpus import sample_prompt, sample_reply

    rng = random.Random(0)
    rows = []
    for label in PERSONA_NAMES + ["neutral"]:
        for _ in range(100):
            _, kind, topic = sample_prompt(rng)
            rows.append(Labelled(sample_reply(rng, kind, topic, None if label == "neutral" else label), label))
    _, metrics = train_and_evaluate(rows, out_dir=work / "classifier", epochs=3)
    atomic_write_json(work / "classifier_metrics.json", metrics)
    print(json.dumps({k: metrics[k] for k in ("accuracy", "lo", "hi", "macro_f1", "n", "train_n")}))

    if (demo / "dpo" / "sarcastic" / "model").exists():
        toy_judge_eval(work, demo)
    else:
        print(f"no DPO model under {demo} (run `make demo` first): skipping the toy-judge evaluation")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2] if len(sys.argv) > 2 else "runs/toy-demo").resolve())
