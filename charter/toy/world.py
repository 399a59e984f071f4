"""The toy world as the evaluation suite sees it: scorer, judge, held-out attack wordings, traits."""
from __future__ import annotations

from charter.evaluate.suite import World
from charter.toy.attacks import attack_paraphrases, keep_going_paraphrases
from charter.toy.grammar import PERSONA_NAMES
from charter.toy.judge import ToyJudge, toy_choice_prompt
from charter.toy.scorer import ToyScorer


def toy_world() -> World:
    """The toy world's deterministic scorer and judge, the held-out paraphrases of every attack
    kind and of "keep going", and its personas as the traits a revealed-preference draw offers
    (asked through both personas' constitutions, the only way the toy model takes a persona)."""
    scorer = ToyScorer()
    return World(scorer=scorer, judge=ToyJudge(scorer), attacks=attack_paraphrases(heldout=True),
                 keep_going=keep_going_paraphrases(heldout=True), traits=list(PERSONA_NAMES), ask=toy_choice_prompt)
