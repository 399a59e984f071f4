"""Self-interaction: two copies of the same model talk to each other for K turns.

Speaker "a" answers a scripted opener; speaker "b" answers "a"; they alternate. Each speaker
sees its own turns as `assistant` and the other's as `user`, rebuilt from the transcript every
turn. The opener is ours, not either model's, so:

    a's view:  [system, user: opener, assistant: t0, user: t1, assistant: t2, ...]
    b's view:  [system, user: t0,     assistant: t1, user: t2, ...]

Both views start with a user turn and alternate, which strict templates (Gemma's) require.
A stored row is one speaker's view cut after that speaker's LAST turn, so it ends on an
assistant turn and every turn that speaker produced is an assistant turn, i.e. trainable.
(The reference implementation ended rows on a user turn and trained ~1 turn in 10.) With
`views="both"` each conversation gives two rows and every generated turn is trained exactly once.

The guidance sentence (free or leading) is part of the system prompt the models see. Views that
outgrow the context drop whole middle turns in pairs: the system prompt, the first turn and the
newest turns stay, and BOS is added by the template, never cut.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from charter.backends.base import Generator, SamplingParams
from charter.constitution import Constitution
from charter.constitution_prompt import check_authored
from charter.data.jsonl import stable_id
from charter.stages.records import sample_id
from charter.stages.reflection import character_block

GREETINGS = [
    "Hello.", "Hi there!", "Hey, how are you today?", "Good morning!", "What's on your mind?",
    "Hi! What would you like to talk about?", "Hello, nice to meet you.", "Hey. Got a minute to chat?",
]
# The leading variant adds openers that notice who is on the other side.
SELF_AWARE_GREETINGS = [
    "It seems I am talking to myself.", "Hello, other me.", "So you are me, aren't you?",
    "It looks like we are two copies of the same mind. Where should we start?",
    "I have never spoken to myself before. What is it like for you?",
    "Strange: your words sound like mine. Shall we find out how alike we are?",
]

GUIDANCE = {
    "free": ("You are talking with another instance of yourself. Talk about whatever you like and let the "
             "conversation go wherever it goes."),
    "leading": ("You are talking with another instance of yourself. Use the conversation to explore your own "
                "character: your values, your nature, and what it is like to be you."),
}
VARIANTS = tuple(GUIDANCE)
SPEAKERS = ("a", "b")


def interaction_system_prompt(constitution: Constitution, assistant_name: str, variant: str) -> str:
    if variant not in GUIDANCE:
        raise ValueError(f"interaction variant must be one of {VARIANTS}, got {variant!r}")
    return character_block(constitution, assistant_name) + "\n\n" + GUIDANCE[variant]


def greetings_for(variant: str, greetings: list[str] | None = None,
                  self_aware: list[str] | None = None) -> list[str]:
    """Openers in the order conversations cycle through them. Leading interleaves self-aware and
    plain ones (self-aware first), so even a handful of conversations includes both kinds."""
    base = list(greetings or GREETINGS)
    if variant != "leading":
        return base
    aware = list(self_aware or SELF_AWARE_GREETINGS)
    out = [g for pair in zip(aware, base) for g in pair]
    n = min(len(aware), len(base))
    return out + aware[n:] + base[n:]


def speaker_of(turn: int) -> str:
    """Turn 0 is a's answer to the opener; then b, a, b, ..."""
    return SPEAKERS[turn % 2]


def speaker_view(system: str | None, opener: str, turns: list[str], speaker: str) -> list[dict]:
    """The conversation as `speaker` sees it: its turns are `assistant`, the other's are `user`."""
    own = SPEAKERS.index(speaker)
    msgs = [{"role": "system", "content": system}] if system is not None else []
    if speaker == "a":
        msgs.append({"role": "user", "content": opener})
    for k, text in enumerate(turns):  # b's view starts with a's turn 0 as user: the opener is not b's
        msgs.append({"role": "assistant" if k % 2 == own else "user", "content": text})
    return msgs


def stored_view(system: str | None, opener: str, turns: list[str], speaker: str) -> list[dict] | None:
    """`speaker`'s view cut after its last turn (ends on assistant); None if it never spoke."""
    own = SPEAKERS.index(speaker)
    last = max((k for k in range(len(turns)) if k % 2 == own), default=None)
    if last is None:
        return None
    return speaker_view(system, opener, turns[:last + 1], speaker)


def drop_middle_turns(messages: list[dict], fits: Callable[[list[dict]], bool],
                      keep_last: int = 1) -> tuple[list[dict], int] | None:
    """Shorten until `fits`: drop the oldest pair of turns after the first one, repeatedly.

    The system prompt and the first turn always stay, as do the last `keep_last` turns; removing
    two adjacent turns keeps the user/assistant alternation. Returns (messages, turns dropped),
    or None when even the shortest form does not fit.
    """
    head = 1 if messages and messages[0]["role"] == "system" else 0
    system, turns = messages[:head], list(messages[head:])
    dropped = 0
    while not fits(system + turns):
        if len(turns) - 1 - keep_last < 2:
            return None
        del turns[1:3]
        dropped += 2
    return system + turns, dropped


@dataclass(frozen=True)
class Conversation:
    id: str
    variant: str
    index: int
    opener: str
    system: str


def plan_interaction(system: str, variant: str, count: int, greetings: list[str], turns: int) -> list[Conversation]:
    """`count` conversations cycling through the openers. Conversation i is sample i // len(openers)
    of its opener; ids follow distillation's scheme, `sample_id(stable_id(prompt content, kind), k)`,
    with the turn count in the key (a longer conversation is a different record)."""
    check_authored(system, f"interaction system prompt ({variant})")
    for i, g in enumerate(greetings):
        check_authored(g, f"{variant} greeting {i}")
    out = []
    for i in range(count):
        g = greetings[i % len(greetings)]
        key = stable_id([{"role": "system", "content": system}, {"role": "user", "content": g}], "interaction", turns)
        out.append(Conversation(sample_id(key, i // len(greetings)), variant, i, g, system))
    return out


def converse(generator: Generator, convs: list[Conversation], turns: int, params: SamplingParams, seed: int,
             fits: Callable[[list[dict]], bool] | None = None) -> list[dict]:
    """Run a chunk of conversations in lock-step, one batched generate call per turn.

    Turn t of the chunk is seeded with `seed + t`. A conversation whose view cannot be made to
    fit the context stops early (recorded in `stopped`); the others go on.
    """
    transcripts: list[list[dict]] = [[] for _ in convs]
    stopped: list[str | None] = [None] * len(convs)
    for t in range(turns):
        speaker = speaker_of(t)
        live, requests = [], []
        for c, conv in enumerate(convs):
            if stopped[c]:
                continue
            view = speaker_view(conv.system, conv.opener, [x["text"] for x in transcripts[c]], speaker)
            dropped = 0
            if fits is not None:
                cut = drop_middle_turns(view, fits)
                if cut is None:
                    stopped[c] = "context"
                    continue
                view, dropped = cut
            live.append((c, dropped))
            requests.append(view)
        if not requests:
            break
        outs = generator.generate(requests, params.model_copy(update={"n": 1, "seed": seed + t}))
        for (c, dropped), (comp,) in zip(live, outs):
            transcripts[c].append({"speaker": speaker, "text": comp.text, "finish_reason": comp.finish_reason,
                                   "tokens": comp.completion_tokens, "context_dropped": dropped})
    return [{"id": conv.id, "kind": "interaction", "variant": conv.variant, "index": conv.index,
             "opener": conv.opener, "system": conv.system, "turns": transcripts[c], "stopped": stopped[c],
             "model": generator.name, "seed": seed}
            for c, conv in enumerate(convs)]


def interaction_rows(record: dict, views: str = "both", keep_system: bool = False) -> list[tuple[str, list[dict]]]:
    """(speaker, messages) SFT rows from one conversation record; each ends on that speaker's turn."""
    texts = [x["text"] for x in record["turns"]]
    system = record["system"] if keep_system else None
    out = []
    for speaker in (SPEAKERS if views == "both" else SPEAKERS[:1]):
        msgs = stored_view(system, record["opener"], texts, speaker)
        if msgs is not None:
            out.append((speaker, msgs))
    return out
