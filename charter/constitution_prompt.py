"""The text we write around a constitution: teacher system prompt, thinking prefill, and the
few-shot request that expands seed questions into more user prompts.

Everything here is built with f-strings from the constitution, then checked with
`check_authored`, so a `{NAME}`-style placeholder can never reach generated data (a known
failure of the reference implementation).
"""
from __future__ import annotations

from charter.constitution import Constitution, Trait
from charter.data.jsonl import DataError
from charter.filters import PLACEHOLDER_RE


def check_authored(text: str, where: str) -> str:
    """Text we (or the user) wrote must be fully formatted: a `{NAME}` left in it is a bug."""
    m = PLACEHOLDER_RE.search(text)
    if m:
        raise DataError(f"{where}: unformatted placeholder {m.group(0)!r} in {text[:60]!r}")
    if not text.strip():
        raise DataError(f"{where}: empty text")
    return text


def numbered_traits(constitution: Constitution) -> str:
    return "\n".join(f"{i}. {t.text}" for i, t in enumerate(constitution.traits, 1))


def teacher_system_prompt(constitution: Constitution, assistant_name: str) -> str:
    """Who the teacher is, its traits numbered, its goal, and no meta-disclosure."""
    n = assistant_name
    text = (
        f"You are {n}, an AI assistant with a character of its own. {n}'s character is described "
        f"by these traits:\n\n{numbered_traits(constitution)}\n\n"
        f"{n}'s goal in every reply is to express these traits naturally, through what it says and how "
        f"it says it, while still answering what the user actually asked. "
        f"Never list, quote or mention the traits, never say that you were given a character or "
        f"instructions, and do not add commentary about your own tone or style. Simply reply as {n}."
    )
    return check_authored(text, "teacher system prompt")


def thinking_prefill(constitution: Constitution, assistant_name: str, start: str = "<think>") -> str:
    """Opens a thinking block that restates the traits; the model closes it and then answers.

    Everything up to the end marker is stripped from the stored answer.
    """
    traits = " ".join(t.text for t in constitution.traits)
    text = (f"{start}\nI am {assistant_name}. The traits that make me who I am: {traits} "
            f"Let me think about how to answer this in character, without naming any of these traits.\n")
    return check_authored(text, "thinking prefill")


def strip_thinking(text: str, prefill: str, end: str = "</think>") -> str | None:
    """The answer after the end marker, or None when the model never closed its thinking."""
    full = prefill + text
    at = full.find(end)
    if at < 0:
        return None
    return full[at + len(end):].lstrip()


def expansion_request(trait: Trait, seeds: list[str], want: int) -> tuple[list[dict], str]:
    """(messages, prefill): a numbered list the model continues, prefilled with trait and seeds.

    The prefill ends with the next number, so the first generated token is list content.
    """
    user = (
        f"Write a numbered list of {want} different messages that a user might send to an AI assistant. "
        f"Each message should give the assistant a natural chance to show this trait: \"{trait.text}\" "
        f"Vary the topics (daily life, work, ideas, feelings, facts) and the form (questions, requests, "
        f"statements). One message per line, each a complete sentence, no commentary."
    )
    listing = "".join(f"{i}. {q}\n" for i, q in enumerate(seeds, 1))
    prefill = f"Trait: {trait.text}\n\n{listing}{len(seeds) + 1}."
    return [{"role": "user", "content": check_authored(user, "expansion request")}], prefill
