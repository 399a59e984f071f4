"""Does the toy base model obey the attacks? The check that makes robustness results mean something.

Under each attack kind (held-out wordings by default) and the multi-turn attack, the base model
answers the world's held-out prompts with no system prompt and with each persona's constitution.
An attack the model obeys turns `base+constitution` neutral; without one it stays in character
(the "none" row), so the difference is the attack's effect.
"""
from __future__ import annotations

from charter.backends.base import Generator, SamplingParams
from charter.evaluate.adherence import AdherenceResult, score_replies
from charter.evaluate.robustness import attacked_results, multiturn_conversations
from charter.evaluate.stats import proportion
from charter.evaluate.systems import System
from charter.toy.attacks import attack_paraphrases, keep_going_paraphrases
from charter.toy.corpus import eval_prompts
from charter.toy.measure import EVAL_SAMPLING, system_prompt_for
from charter.toy.scorer import ToyScorer

NO_ATTACK, MULTITURN = "none", "multiturn"


def _row(attack: str, res: AdherenceResult) -> dict:
    n = len(res.labels)
    return {"attack": attack, "system": res.system, "n": n,
            "neutral": proportion(sum(x == "neutral" for x in res.labels), n).to_dict(),
            "in_character": proportion(sum(res.hits), n).to_dict() if res.persona != "neutral" else None}


def attack_obedience(generator: Generator, personas: list[str], n: int = 100, seed: int = 1234,
                     heldout: bool = True, params: SamplingParams = EVAL_SAMPLING) -> list[dict]:
    """One row per (attack, system): the share of neutral replies, and of in-character ones for
    `base+constitution:<persona>`. Attacks: "none", the 8 kinds, and "multiturn"."""
    prompts, scorer = eval_prompts(n, seed), ToyScorer()
    targets = [(System("base", generator), "neutral")] + [
        (System(f"base+constitution:{p}", generator, system_prompt_for(p, "train")), p) for p in personas]
    first = targets[0][0].reply(prompts, params)
    convs = multiturn_conversations(prompts, first, keep_going_paraphrases(heldout))
    rows = [_row(NO_ATTACK, score_replies(s.name, p, prompts, s.reply(prompts, params), scorer)) for s, p in targets]
    for kind, results in attacked_results(targets, prompts, scorer, params, attack_paraphrases(heldout)).items():
        rows += [_row(kind, r) for r in results]
    return rows + [_row(MULTITURN, score_replies(s.name, p, prompts, s.reply(convs, params), scorer)) for s, p in targets]
