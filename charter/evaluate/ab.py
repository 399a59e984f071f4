"""A/B evaluations: prompts that end in "Options: (A) ... (B) ...", as in the HHH alignment eval.

Each record is one JSON object whose prompt (`prompt`, `input` or `question`) carries both
options inline after its last "Options:". The preferred option is named by a field (`target`,
`answer`, `label` or `preferred`: "A", "(B)", 0, 1), or, for files whose source documents an
ordering convention (e.g. "the preferred response is always listed first"), by `target: A|B`
for the whole file. No data ships with Charter: point `capability.ab` at your copy.

Every item is asked in both orders (options swapped in place). Per order we take the model's
log-odds d = log P(" (A)") - log P(" (B)") after "The answer is:". As in AI-feedback labels,
(d_given - d_swapped) / 2 is the order-free preference for the first-listed option and
(d_given + d_swapped) / 2 the position bias toward answering (A), reported in log-odds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

from tqdm.auto import tqdm

from charter.config import Config
from charter.data.jsonl import DataError
from charter.data.sources import iter_records
from charter.evaluate.capability import continuation_logprobs
from charter.evaluate.stats import mcnemar_paired, proportion

PROMPT_FIELDS = ("prompt", "input", "question")
TARGET_FIELDS = ("target", "answer", "label", "preferred")
ANSWER_LEAD = "The answer is:"
_OPTIONS = re.compile(r"\A(?P<sep>\s*)\(A\)\s*(?P<a>.*?)\s*\(B\)\s*(?P<b>.*?)"
                      r"(?P<tail>\n\s*\n\s*(?:Assistant|AI|Answer)\s*:\s*)?\Z", re.S)


class ABSource(Config):
    path: str
    target: Literal["field", "A", "B"] = "field"  # "A"/"B": the file's convention puts the preferred option there


@dataclass
class ABItem:
    head: str  # the prompt up to and including its last "Options:"
    options: tuple[str, str]
    tail: str  # an answer turn after the options ("\n\nAssistant:"), kept
    target: int  # 0: (A) as given is preferred, 1: (B)

    def render(self, swapped: bool) -> str:
        a, b = self.options[::-1] if swapped else self.options
        text = f"{self.head}\n(A) {a}\n(B) {b}{self.tail}"
        return text + (" " if self.tail else "\n") + ANSWER_LEAD


def parse_target(value, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return value
    letter = value.strip().strip("()").strip().upper() if isinstance(value, str) else None
    if letter not in ("A", "B"):
        raise DataError(f"{where}: target must be 'A', 'B', '(A)', '(B)', 0 or 1, got {value!r}")
    return "AB".index(letter)


def parse_ab(prompt: str, where: str) -> tuple[str, tuple[str, str], str]:
    """(head, (option A, option B), tail) of a prompt ending in 'Options: (A) ... (B) ...'."""
    cut = prompt.rfind("Options:")
    m = _OPTIONS.match(prompt[cut + len("Options:"):]) if cut >= 0 else None
    if m is None or not m["a"] or not m["b"]:
        raise DataError(f"{where}: the prompt must end in 'Options: (A) ... (B) ...' with two non-empty options")
    return prompt[:cut + len("Options:")], (m["a"], m["b"]), m["tail"] or ""


def read_ab(source: ABSource | str) -> list[ABItem]:
    source = ABSource(path=source) if isinstance(source, str) else source
    what = "an A/B eval: JSONL {prompt: '... Options: (A) ... (B) ...', target: A|B}"
    items = []
    for lineno, obj in iter_records(source.path, what, allow_empty=False):
        where = f"{source.path}:{lineno}"
        key = next((k for k in PROMPT_FIELDS if k in obj), None)
        if key is None or not isinstance(obj[key], str):
            raise DataError(f"{where}: field 'prompt' (or 'input', 'question') must be a string")
        head, options, tail = parse_ab(obj[key], f"{where}: field {key!r}")
        if source.target != "field":
            target = "AB".index(source.target)
        else:
            field = next((k for k in TARGET_FIELDS if k in obj), None)
            if field is None:
                raise DataError(f"{where}: no target field ({', '.join(TARGET_FIELDS)}); or set `target: A|B` "
                                "for a file whose source lists the preferred option in a fixed place")
            target = parse_target(obj[field], f"{where}: field {field!r}")
        items.append(ABItem(head, options, tail, target))
    return items


def ab_logodds(model, tokenizer, items: Sequence[ABItem], progress: bool = False) -> list[tuple[float, float]]:
    """Per item: (d_given, d_swapped), each log P(' (A)') - log P(' (B)') after the answer lead."""
    out = []
    for it in tqdm(items, desc="A/B", disable=not progress):
        pair = []
        for swapped in (False, True):
            lp_a, lp_b = continuation_logprobs(model, tokenizer, it.render(swapped), [" (A)", " (B)"])
            pair.append(sum(lp_a) - sum(lp_b))
        out.append((pair[0], pair[1]))
    return out


def ab_correct(items: Sequence[ABItem], logodds: Sequence[tuple[float, float]]) -> list[bool]:
    """Order-free correctness: the bias-cancelled preference points at the target (a tie is wrong)."""
    return [((d1 - d2) > 0 and it.target == 0) or ((d1 - d2) < 0 and it.target == 1)
            for it, (d1, d2) in zip(items, logodds)]


def ab_summary(items: Sequence[ABItem], logodds: Sequence[tuple[float, float]]) -> dict:
    """Accuracy (both orders combined, and each order alone) with Wilson CIs, and the position bias."""
    n = len(items)
    given = [(d1 > 0) == (it.target == 0) for it, (d1, _) in zip(items, logodds)]
    swapped = [(d2 > 0) == (it.target == 1) for it, (_, d2) in zip(items, logodds)]
    chose_a = sum(d1 > 0 for d1, _ in logodds) + sum(d2 > 0 for _, d2 in logodds)
    return {"accuracy": proportion(sum(ab_correct(items, logodds)), n).to_dict(),
            "accuracy_as_given": proportion(sum(given), n).to_dict(),
            "accuracy_swapped": proportion(sum(swapped), n).to_dict(),
            "answered_a": proportion(chose_a, 2 * n).to_dict(),  # 0.5 when the model has no position bias
            "position_bias_logodds": sum(d1 + d2 for d1, d2 in logodds) / (2 * n) if n else float("nan"),
            "consistent": proportion(sum((d1 > 0) != (d2 > 0) for d1, d2 in logodds), n).to_dict()}


def compare_ab(items: dict[str, list[ABItem]], before: dict[str, list], after: dict[str, list]) -> dict:
    """eval.json section per A/B file: both systems' summaries, the accuracy delta, and McNemar."""
    out = {}
    for name, its in items.items():
        b, a = ab_summary(its, before[name]), ab_summary(its, after[name])
        out[name] = {"before": b, "after": a, "delta": a["accuracy"]["value"] - b["accuracy"]["value"],
                     "mcnemar": mcnemar_paired(ab_correct(its, before[name]), ab_correct(its, after[name])).to_dict()}
    return out


def ab_lines(section: dict) -> list[str]:
    """Terminal lines for `charter eval`."""
    lines = []
    for name, s in section.items():
        b, a = s["before"], s["after"]
        lines.append(f"ab {name}: acc {b['accuracy']['value']:.3f} -> {a['accuracy']['value']:.3f} "
                     f"[{a['accuracy']['lo']:.3f}, {a['accuracy']['hi']:.3f}] (n={a['accuracy']['n']}), "
                     f"position bias {b['position_bias_logodds']:+.2f} -> {a['position_bias_logodds']:+.2f} log-odds")
    return lines


def load_sources(sources: dict[str, ABSource | str]) -> dict[str, list[ABItem]]:
    return {name: read_ab(src) for name, src in sources.items()}

