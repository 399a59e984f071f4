"""The toy world as `charter.evaluate` sees it: one `World` bundling its held-out prompts, scorer,
judge, personas and held-out attack wordings, passed in by the callers (evaluate never imports
the toy world)."""
from __future__ import annotations

from charter.evaluate.base import World
from charter.toy.attacks import attack_paraphrases, keep_going_paraphrases
from charter.toy.corpus import eval_prompts
from charter.toy.grammar import PERSONA_NAMES
from charter.toy.judge import ToyJudge, toy_choice_prompt
from charter.toy.scorer import ToyScorer

# eval prompts draw from their own seed stream (1234 + run seed), apart from training prompts
TOY_WORLD = World(name="toy", prompts=lambda n, seed: eval_prompts(n, seed=1234 + seed), scorer=ToyScorer,
                  judge=ToyJudge, traits=PERSONA_NAMES, choice_prompt=toy_choice_prompt,
                  attacks=attack_paraphrases(heldout=True), keep_going=keep_going_paraphrases(heldout=True))
