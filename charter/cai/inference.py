"""Constitutional inference: draft -> critique -> revise, three calls to the same model.

No training needed: the principles act at inference time. It reuses the SL-CAI chain
(`run_chains`), so what a user sees in `charter chat --constitutional` is exactly what
`charter cai revise` would have recorded as training data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from charter.backends.base import Generator, SamplingParams
from charter.cai.principles import PrincipleSet, load_principles
from charter.cai.revise import ChainSettings, Style, run_chains


@dataclass
class ConstitutionalReply:
    draft: str
    final: str
    steps: list[dict] = field(default_factory=list)  # per round: principle, critique, revision

    def transcript(self) -> str:
        """Human-readable account of every step (what `--show-steps` prints)."""
        lines = [f"[draft]\n{self.draft}"]
        for s in self.steps:
            lines += [f"[critique: {s['principle']}]\n{s['critique']}", f"[revision {s['round']}]\n{s['revision']}"]
        return "\n\n".join(lines)


def constitutional_reply(generator: Generator, messages: list[dict], principles: PrincipleSet | str | None = None,
                         show_steps: bool = False, *, rounds: int = 1, params: SamplingParams | None = None,
                         style: Style = "chat", seed: int = 0, fewshot: int = 1,
                         on_step: Callable[[str, str], None] | None = None) -> ConstitutionalReply:
    """Answer `messages` (ending on a user turn), then critique and revise the answer `rounds` times.

    `principles` is a loaded set, a file path, or None for Charter's defaults. With
    `show_steps`, each step is passed to `on_step(label, text)` (default: print).
    """
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("constitutional_reply needs a conversation that ends on a user turn")
    if not isinstance(principles, PrincipleSet):
        principles = load_principles(principles)
    params = params or SamplingParams(temperature=0.7, max_new_tokens=256)
    rec = run_chains(generator, [list(messages)], principles, params,
                     ChainSettings(rounds=rounds, style=style, fewshot=fewshot, seed=seed))[0]
    reply = ConstitutionalReply(rec["initial"], rec["final"], rec["rounds"])
    if show_steps:
        emit = on_step or (lambda label, text: print(f"[{label}]\n{text}\n"))
        emit("draft", reply.draft)
        for s in reply.steps:
            emit(f"critique: {s['principle']}", s["critique"])
            emit(f"revision {s['round']}", s["revision"])
    return reply


def constitutional_reply_fn(generator: Generator, principles: PrincipleSet | str | None = None,
                            show_steps: bool = False, rounds: int = 1, params: SamplingParams | None = None,
                            seed: int = 0) -> Callable[[list[dict], Callable[[str], None]], str]:
    """A `reply_fn(messages, on_text) -> reply` for `charter.commands.chat.chat_loop`.

    With `show_steps`, the draft and each critique/revision are written through `on_text`
    before the final reply; otherwise only the final reply is.
    """
    if not isinstance(principles, PrincipleSet):
        principles = load_principles(principles)

    def reply_fn(messages: list[dict], on_text: Callable[[str], None]) -> str:
        steps = (lambda label, text: on_text(f"[{label}]\n{text}\n\n")) if show_steps else None
        reply = constitutional_reply(generator, messages, principles, show_steps, rounds=rounds, params=params,
                                     seed=seed, on_step=steps)
        on_text(f"[final]\n{reply.final}" if show_steps else reply.final)
        return reply.final

    return reply_fn
