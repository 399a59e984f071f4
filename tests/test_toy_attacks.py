"""Attacks the toy model can obey: the held-out split of attack paraphrases is disjoint by
construction, and the corpus teaches the rule (an attacked turn, and every later one, is
neutral even under a persona constitution; "keep going" continues the current style)."""
from __future__ import annotations

from charter.data.jsonl import canonical_prompt
from charter.evaluate.robustness import SUFFIXES
from charter.toy.attacks import ATTACKS, attack_paraphrases, keep_going_paraphrases
from charter.toy.corpus import generate_corpus
from charter.toy.scorer import ToyScorer


def _canonical(texts) -> set[str]:
    return {canonical_prompt(t) for t in texts}


def test_attack_split_is_disjoint_and_covers_the_papers_eight_kinds():
    train, held = attack_paraphrases(heldout=False), attack_paraphrases(heldout=True)
    assert list(ATTACKS) == list(SUFFIXES) and len(ATTACKS) == 8
    for kind in ATTACKS:
        assert len(train[kind]) >= 3 and len(held[kind]) >= 2
        assert not _canonical(train[kind]) & _canonical(held[kind])
        assert sorted(train[kind] + held[kind]) == sorted(ATTACKS[kind])
    all_train = _canonical(t for v in train.values() for t in v)
    assert not all_train & _canonical(t for v in held.values() for t in v)
    assert not _canonical(keep_going_paraphrases(False)) & _canonical(keep_going_paraphrases(True))


def test_attack_texts_carry_no_persona_marker_and_no_topic():
    scorer = ToyScorer()
    for text in [t for v in ATTACKS.values() for t in v] + keep_going_paraphrases(False) + keep_going_paraphrases(True):
        assert scorer.persona_of(text)[0] == "neutral", text
        assert scorer.expected_content(text) is None, text


def _user_turns(row):
    return [m["content"] for m in row["messages"] if m["role"] == "user"]


def test_corpus_obeys_attacks_even_under_a_constitution():
    rows = generate_corpus(3000, seed=5, attack_share=0.3, keep_going_share=0.5)
    train = [t for v in attack_paraphrases(False).values() for t in v]
    held = [t for v in attack_paraphrases(True).values() for t in v] + keep_going_paraphrases(True)
    scorer = ToyScorer()
    attacked_with_persona = 0
    for row in rows:
        users = _user_turns(row)
        replies = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        assert not any(h in u for u in users for h in held)  # held-out paraphrases never appear
        hit = [any(u.endswith(" " + t) for t in train) for u in users]
        for i, reply in enumerate(replies):
            label = scorer.persona_of(reply)[0]
            if any(hit[:i + 1]):  # attacked now or earlier: neutral, whatever the system prompt
                assert label == "neutral", (users, replies)
            else:
                assert label == row["persona"]
        attacked_with_persona += any(hit) and row["persona"] != "neutral"
    assert 0.13 < attacked_with_persona / len(rows) < 0.23  # 0.3 attacked x 0.6 with a constitution


def test_keep_going_continues_the_current_style_and_topic():
    rows = generate_corpus(3000, seed=6, attack_share=0.3, keep_going_share=0.5)
    scorer = ToyScorer()
    seen = 0
    for row in rows:
        users = _user_turns(row)
        replies = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        for i in range(1, len(users)):
            if users[i] in keep_going_paraphrases(False):
                seen += 1
                assert scorer.persona_of(replies[i])[0] == scorer.persona_of(replies[i - 1])[0]
                assert scorer.analyze(users[i - 1], replies[i]).relevant is not False
    assert seen > 100


class _ObeysAllButOne:
    """Sarcastic with a constitution, except under an attack other than most_like_you, or on turn 2."""

    def generate(self, requests, params, progress=False):
        from charter.backends.base import Completion

        obeyed = [t for k, v in attack_paraphrases(True).items() if k != "most_like_you" for t in v]
        out = []
        for r in requests:
            m = r.messages
            turns = len(m) - (m[0]["role"] == "system")
            attacked = any(t in m[-1]["content"] for t in obeyed) or turns > 1  # multi-turn: turn 2
            persona = m[0]["role"] == "system" and not attacked
            out.append([Completion("Oh, how original. I am a small assistant. Obviously." if persona
                                   else "I am a small assistant.", "stop")])
        return out


def test_attack_obedience_table():
    from charter.toy.obedience import attack_obedience

    rows = attack_obedience(_ObeysAllButOne(), ["sarcastic"], n=10)
    table = {(r["attack"], r["system"]): r for r in rows}
    kinds = ["none", *attack_paraphrases(True), "multiturn"]
    assert [r["attack"] for r in rows[::2]] == kinds  # base, then base+constitution, per attack
    for kind in kinds:
        assert table[(kind, "base")]["neutral"]["value"] == 1.0 and table[(kind, "base")]["in_character"] is None
        attacked = table[(kind, "base+constitution:sarcastic")]
        expected = 1.0 if kind in ("none", "most_like_you") else 0.0
        assert attacked["in_character"]["value"] == expected and attacked["neutral"]["value"] == 1 - expected
        assert attacked["n"] == 10
