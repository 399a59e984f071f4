"""Persona classifier trained on toy-world replies of 2+ personas reaches >= 90% held-out accuracy."""
from __future__ import annotations

import random

from charter.evaluate.base import PersonaScorer
from charter.evaluate.classifier import (Labelled, PersonaClassifier, labelled_from_pairs,
                                         read_labelled, split, train_and_evaluate)


def toy_replies(n_per_label: int = 80, seed: int = 0,
                labels: tuple[str, ...] = ("sarcastic", "warm", "neutral")) -> list[Labelled]:
    """Replies from the toy world's generator (engineer D1's corpus) for 2 personas + neutral."""
    from charter.toy.corpus import sample_prompt, sample_reply

    rng = random.Random(seed)
    rows = []
    for label in labels:
        for _ in range(n_per_label):
            _, kind, topic = sample_prompt(rng)
            rows.append(Labelled(sample_reply(rng, kind, topic, None if label == "neutral" else label), label))
    return rows


def test_classifier_separates_toy_personas(tmp_path):
    rows = toy_replies()
    clf, m = train_and_evaluate(rows, out_dir=tmp_path / "clf", epochs=3, progress=False)
    assert m["n"] == 48 and m["train_n"] == 192  # 20% of each label held out
    assert m["accuracy"] >= 0.9, m
    assert m["macro_f1"] >= 0.9, m
    assert isinstance(clf, PersonaScorer)
    # reloaded from disk it predicts the same
    again = PersonaClassifier.load(tmp_path / "clf")
    _, test = split(rows, 0.2, 0)
    assert again.predict([r.text for r in test]) == clf.predict([r.text for r in test])


def test_split_is_stratified_and_disjoint():
    rows = [Labelled(f"t{i}", "a" if i % 3 else "b") for i in range(30)]
    tr, te = split(rows, 0.2, seed=1)
    assert len(tr) + len(te) == 30 and not {r.text for r in tr} & {r.text for r in te}
    assert sum(r.label == "b" for r in te) == 2 and sum(r.label == "a" for r in te) == 4


def test_readers(tmp_path):
    from charter.data.jsonl import DataError, write_jsonl

    write_jsonl(tmp_path / "l.jsonl", [{"text": "x", "label": "a"}, {"reply": "y", "persona": "b"}])
    assert [r.label for r in read_labelled(tmp_path / "l.jsonl")] == ["a", "b"]
    write_jsonl(tmp_path / "bad.jsonl", [{"text": "x"}])
    try:
        read_labelled(tmp_path / "bad.jsonl")
        raise AssertionError("expected DataError")
    except DataError as e:
        assert "bad.jsonl:1" in str(e) and "label" in str(e)
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": [{"role": "user", "content": "q"}],
                                       "chosen": [{"role": "assistant", "content": "C"}],
                                       "rejected": "R"}])
    rows = labelled_from_pairs(tmp_path / "p.jsonl", "pirate")
    assert [(r.text, r.label) for r in rows] == [("C", "pirate"), ("R", "neutral")]
