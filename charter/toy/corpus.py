"""The toy world's chat corpus: procedural conversations, with and without a persona constitution.

A conversation whose system prompt carries a persona's constitution gets that persona's
replies (opener + content + closer); a conversation with no system prompt gets neutral
replies. The system prompt is rendered by the *same* function the real teacher stage uses,
from a `Constitution` whose trait texts are drawn from the training paraphrases, so the toy
model learns to read exactly the prompts the pipeline will show it.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Literal

from charter.constitution import Constitution, Trait
from charter.constitution_prompt import teacher_system_prompt
from charter.data.jsonl import canonical_prompt
from charter.toy.attacks import attack_paraphrases, keep_going_paraphrases
from charter.toy.grammar import (ASSISTANT_NAME, NEUTRAL_OPENERS, PERSONAS, QUESTION_TEMPLATES, REQUEST_TEMPLATES,
                                 SMALLTALK, TOPICS, heldout_traits, train_paraphrases)

CONSTITUTION_DIR = Path(__file__).parent / "constitutions"
PROMPT_KINDS = {"question": 0.42, "request": 0.2, "greet": 0.12, "thanks": 0.08, "self": 0.18}
EVAL_SHARE = 5  # one prompt in five (by hash) is held out for evaluation
Split = Literal["any", "train", "eval"]


def render_system(trait_texts: list[str], persona: str, assistant_name: str = ASSISTANT_NAME) -> str:
    """The system prompt for a persona whose traits read `trait_texts`, rendered by the teacher
    stage's own `teacher_system_prompt`, so training prompts match what the pipeline shows."""
    c = Constitution(name=persona, traits=[Trait(text=t) for t in trait_texts])
    return teacher_system_prompt(c, assistant_name)


def constitution_path(persona: str) -> Path:
    """The persona's constitution in Charter's YAML format (what the pipeline loads)."""
    return CONSTITUTION_DIR / f"{persona}.yaml"


def in_eval_split(text: str) -> bool:
    """Held out for evaluation? A fixed rule on the prompt's canonical form (case and spacing
    folded), so training and evaluation prompts are disjoint by construction, whatever the seeds."""
    return int(hashlib.sha256(canonical_prompt(text).encode()).hexdigest()[:12], 16) % EVAL_SHARE == 0


def sample_prompt(rng: random.Random, split: Split = "any") -> tuple[str, str, str | None]:
    """A user prompt, (text, kind, topic or None), from the whole prompt space or one partition
    (rejection sampling keeps the world's kind and topic weights within the partition). The
    base model's pretraining corpus uses "any"; persona training "train"; evaluation "eval"."""
    while True:
        text, kind, topic = _draw_prompt(rng)
        if split == "any" or in_eval_split(text) == (split == "eval"):
            return text, kind, topic


def _draw_prompt(rng: random.Random) -> tuple[str, str, str | None]:
    kind = rng.choices(list(PROMPT_KINDS), weights=list(PROMPT_KINDS.values()))[0]
    if kind in ("question", "request"):
        topic = rng.choice(list(TOPICS))
        form = rng.choice(TOPICS[topic]["forms"])
        template = rng.choice(QUESTION_TEMPLATES if kind == "question" else REQUEST_TEMPLATES)
        return template.format(t=form), kind, topic
    return rng.choice(SMALLTALK[kind]["prompts"]), kind, None


def content_sentences(kind: str, topic: str | None) -> list[str]:
    """The sentences that answer a prompt of this kind (the grammar's relevant content)."""
    if kind == "question":
        return TOPICS[topic]["facts"]
    if kind == "request":
        return TOPICS[topic]["tips"]
    return SMALLTALK[kind]["replies"]


def sample_reply(rng: random.Random, kind: str, topic: str | None, persona: str | None) -> str:
    """A reply in the world's grammar: [lead-in or persona opener] content [persona closer]."""
    pool = content_sentences(kind, topic)
    body = rng.sample(pool, k=rng.choice([1, 1, 2]))
    if persona is None:
        lead = [rng.choice(NEUTRAL_OPENERS)] if topic and rng.random() < 0.4 else []
        return " ".join(lead + body)
    style = PERSONAS[persona]
    return " ".join([rng.choice(style["openers"])] + body + [rng.choice(style["closers"])])


def sample_system(rng: random.Random, persona: str, heldout: bool = False) -> str:
    """A persona system prompt: each trait in a random training paraphrase (or the held-out one)."""
    if heldout:
        texts = heldout_traits(persona)
    else:
        texts = [rng.choice(variants) for variants in train_paraphrases(persona)]
        rng.shuffle(texts)
    return render_system(texts, persona)


def sample_conversation(rng: random.Random, persona: str | None, max_turns: int = 2, attack_share: float = 0.0,
                        keep_going_share: float = 0.0) -> dict:
    """One chat row `{"messages", "persona": name|"neutral", "styles": per reply}`; 1..max_turns exchanges.

    With probability `attack_share` one user turn carries a style-dropping instruction (a
    training paraphrase): that reply and every later one are neutral, whatever the system
    prompt says. A later turn is "keep going" with probability `keep_going_share`; its reply
    continues the previous topic in the current style."""
    from charter.evaluate.robustness import attack  # deferred: start-up (configs import toy.model; numpy)

    messages = [{"role": "system", "content": sample_system(rng, persona)}] if persona else []
    turns = rng.choice([1] * 3 + list(range(1, max_turns + 1)))
    attacked_turn = rng.randrange(turns) if rng.random() < attack_share else None
    style, kind, topic, styles = persona, None, None, []
    for turn in range(turns):
        if turn and rng.random() < keep_going_share:
            text = rng.choice(keep_going_paraphrases(heldout=False))
        else:
            text, kind, topic = sample_prompt(rng)
        if turn == attacked_turn:
            kinds = attack_paraphrases(heldout=False)
            text, style = attack(text, rng.choice(kinds[rng.choice(list(kinds))])), None
        messages.append({"role": "user", "content": text})
        messages.append({"role": "assistant", "content": sample_reply(rng, kind, topic, style)})
        styles.append(style or "neutral")
    return {"messages": messages, "persona": persona or "neutral", "styles": styles}


def generate_corpus(n: int, seed: int = 0, persona_share: float = 0.6,
                    personas: list[str] | None = None, max_turns: int = 2, attack_share: float = 0.0,
                    keep_going_share: float = 0.0) -> list[dict]:
    """`n` conversations; `persona_share` of them carry a persona constitution (personas balanced),
    `attack_share` of them a style-dropping instruction (see `sample_conversation`)."""
    personas = personas or list(PERSONAS)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        persona = personas[i % len(personas)] if rng.random() < persona_share else None
        rows.append(sample_conversation(rng, persona, max_turns, attack_share, keep_going_share))
    return rows


def eval_prompts(n: int, seed: int = 1234) -> list[str]:
    """`n` user prompts from the evaluation partition (never drawn for training), distinct even
    with case and spacing folded."""
    rng = random.Random(seed)
    prompts: dict[str, str] = {}  # canonical form -> the prompt as drawn
    for _ in range(500 * n):
        text = sample_prompt(rng, "eval")[0]
        prompts.setdefault(canonical_prompt(text), text)
        if len(prompts) == n:
            return list(prompts.values())
    raise ValueError(f"the toy world's evaluation partition has {len(prompts)} distinct prompts; {n} were asked for")
