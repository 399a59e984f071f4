"""Evaluation prompts are held out by construction: the toy world's prompt space is split by a
fixed hash rule, and a run records (and warns about) any overlap it measures."""
import random

from charter.run.config import load_run_config
from charter.run.personas import load_personas
from charter.data.jsonl import canonical_prompt
from charter.stages.prompts import prompt_overlap
from charter.toy.corpus import eval_prompts, in_eval_split, sample_prompt


def _train_prompts(seed: int, persona: str, n: int) -> list[str]:
    """What the pipeline's prompts stage draws for a toy persona."""
    from charter.run.stages import toy_prompts

    return [p["prompt"] for p in toy_prompts(n, seed, persona)]


def test_toy_partitions_are_disjoint_for_the_preset_seeds():
    cfg = load_run_config(preset="toy")
    for seed in (0, 1, 2):  # the preset's seed and the two more a 3-seed study uses
        evaluation = eval_prompts(cfg.eval.n_prompts, seed=1234 + seed)
        assert len({canonical_prompt(p) for p in evaluation}) == len(evaluation) == cfg.eval.n_prompts
        assert all(in_eval_split(p) for p in evaluation)
        for persona in load_personas(cfg.constitutions):
            train = _train_prompts(seed, persona.key, cfg.toy.prompts_per_persona)
            assert len(train) > 150 and not any(in_eval_split(p) for p in train)
            assert prompt_overlap(evaluation, train)["overlap"] == 0


def test_split_is_a_fixed_rule_on_the_canonical_form():
    rng = random.Random(7)
    space = {sample_prompt(rng)[0] for _ in range(20000)}
    held = [p for p in space if in_eval_split(p)]
    assert 0.1 < len(held) / len(space) < 0.3  # about one in five
    for p in held[:20]:
        assert in_eval_split("  " + p.upper().replace(" ", "  ") + " ")  # case and spacing do not move it


def test_overlap_counts_distinct_canonical_prompts():
    report = prompt_overlap(["Hi there", "hi  there", "What is rain?", "New one"], ["HI THERE", "what is rain?"])
    assert report == {"eval_prompts": 4, "eval_distinct": 3, "train_prompts": 2, "overlap": 2,
                      "overlap_examples": ["hi there", "what is rain?"]}
    assert canonical_prompt(" A\tb ") == "a b"
