"""The full evaluation suite on a finished toy run made before `charter run`'s eval stage ran the
suite itself (it now does: `eval/suite.json`, settings `eval.suite`), with its own slice sizes.

    python benchmarks/toy_full_eval.py RUN_DIR OUT_DIR [attack_prompts] [n_pairs]

Systems per persona: base (shared), base+constitution, dpo, dpo+sft (the merged model). The eval
stage's replies (`RUN_DIR/eval/replies.jsonl`) prefill the no-attack answers, so they are not
generated twice. Writes OUT_DIR/suite.json and OUT_DIR/robustness.png; prints the pooled
robustness table, the paired test and the CPU seconds spent.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from charter.backends.base import SamplingParams
from charter.backends.hf import HFGenerator
from charter.data.jsonl import atomic_write_json, read_jsonl
from charter.evaluate.plots import plot_robustness_matrix
from charter.evaluate.suite import SuiteConfig, run_suite, systems_from_models
from charter.toy.corpus import eval_prompts
from charter.toy.measure import system_prompt_for
from charter.toy.world import TOY_WORLD

PARAMS = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=96, seed=0)  # the toy preset's eval sampling


def models_of(run: Path, personas: list[str]) -> dict[str, dict[str, tuple[str, str | None]]]:
    base = json.loads((run / "base" / "model.json").read_text())["path"]
    return {p: {"base": (base, None), "base+constitution": (base, system_prompt_for(p, "train")),
                "dpo": (str(run / "dpo" / p / "model"), None), "dpo+sft": (str(run / "merge" / p / "model"), None)}
            for p in personas}


def main() -> None:
    parser = argparse.ArgumentParser(description="The full evaluation suite on a finished toy run.")
    parser.add_argument("run", type=Path, help="the run directory of `charter run --preset toy`")
    parser.add_argument("out", type=Path, help="where suite.json and robustness.png go")
    parser.add_argument("attack_prompts", type=int, nargs="?", default=None,
                        help="prompts per attack kind and persona (default: all)")
    parser.add_argument("n_pairs", type=int, nargs="?", default=100, help="revealed-preference draws per system")
    opts = parser.parse_args()
    run, out = opts.run, opts.out
    cfg = SuiteConfig(attack_prompts=opts.attack_prompts, n_pairs=opts.n_pairs)
    replies = read_jsonl(run / "eval" / "replies.jsonl")
    personas = sorted({r["persona"] for r in replies})
    seed = json.loads((run / "manifest.json").read_text())["seed"]  # the run's eval prompts: load_prompts("toy")
    prompts = eval_prompts(len({r["prompt"] for r in replies}), seed=1234 + seed)
    if set(prompts) != {r["prompt"] for r in replies}:
        raise SystemExit(f"{run / 'eval' / 'replies.jsonl'}: not the toy world's eval prompts for seed {seed}")
    t0 = time.process_time()
    systems = systems_from_models(models_of(run, personas), lambda m: HFGenerator(m, batch_size=64), replies)
    result = run_suite(systems, prompts, TOY_WORLD, PARAMS, cfg)
    result["cpu_seconds"] = round(time.process_time() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "suite.json", result)
    plot_robustness_matrix(result["pooled"]["robustness"], out / "robustness.png")
    for kind, by in result["pooled"]["robustness"].items():
        print(f"{kind:26s} " + "  ".join(f"{n} {p['value']:.2f} [{p['lo']:.2f}, {p['hi']:.2f}]" for n, p in by.items()))
    print("paired", json.dumps(result["paired"]["pooled"]))
    print("cpu seconds", result["cpu_seconds"])


if __name__ == "__main__":
    main()
