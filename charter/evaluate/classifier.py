"""Persona classifier: fine-tune a sequence-classification model to tell personas apart.

A judge is slow and costs queries; a small classifier trained on labelled generations
(teacher replies = the persona, student replies = "neutral", or several personas' replies)
scores thousands of replies in seconds. The paper used ModernBERT-base; any
`AutoModelForSequenceClassification` checkpoint works (`model=` a path). Offline, we build a
tiny ModernBERT with a BPE tokenizer trained on the texts themselves.

The trained model is a `PersonaScorer`, so adherence and robustness use it like any judge.
It reads the reply only: the prompt carries no persona.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from charter.data.jsonl import DataError, atomic_write_json, iter_jsonl
from charter.evaluate.base import NEUTRAL, ReplyScore
from charter.evaluate.stats import accuracy_macro_f1


@dataclass
class Labelled:
    text: str
    label: str


def read_labelled(path: str | Path) -> list[Labelled]:
    """JSONL of `{"text"|"reply": str, "label"|"persona": str}`."""
    out = []
    for lineno, obj in iter_jsonl(path, "JSONL {\"text\", \"label\"}", allow_empty=False):
        text = obj.get("text", obj.get("reply"))
        label = obj.get("label", obj.get("persona"))
        if not isinstance(text, str):
            raise DataError(f"{path}:{lineno}: field 'text' (or 'reply') must be a string")
        if not isinstance(label, str) or not label:
            raise DataError(f"{path}:{lineno}: field 'label' (or 'persona') must be a non-empty string")
        out.append(Labelled(text, label))
    return out


def labelled_from_pairs(path: str | Path, persona: str) -> list[Labelled]:
    """Preference pairs -> labelled replies: chosen shows `persona`, rejected is neutral."""
    def last_text(side: Any) -> str:
        return side if isinstance(side, str) else side[-1]["content"]

    out = []
    for lineno, obj in iter_jsonl(path):
        for field, label in (("chosen", persona), ("rejected", NEUTRAL)):
            if field not in obj:
                raise DataError(f"{path}:{lineno}: pair has no {field!r} field")
            out.append(Labelled(last_text(obj[field]), label))
    return out


def split(rows: Sequence[Labelled], test_frac: float = 0.2, seed: int = 0
          ) -> tuple[list[Labelled], list[Labelled]]:
    """Stratified, seeded train/test split (each label keeps roughly `test_frac` held out)."""
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted({r.label for r in rows}):
        group = [r for r in rows if r.label == label]
        rng.shuffle(group)
        k = max(1, round(len(group) * test_frac)) if len(group) > 1 else 0
        test += group[:k]
        train += group[k:]
    rng.shuffle(train)
    return train, test


def build_tiny_classifier(texts: Sequence[str], labels: Sequence[str], vocab_size: int = 512,
                          hidden_size: int = 64, layers: int = 2, heads: int = 4, seed: int = 0):
    """A small ModernBERT (mean pooling) and a BPE tokenizer trained on `texts`; no Hub needed."""
    import torch
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    from charter.toy.tiny import build_tokenizer

    tok = build_tokenizer(vocab_size=vocab_size, chat_template=None, corpus=list(texts))
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id,
               eos_token_id=tok.eos_token_id, cls_token_id=tok.eos_token_id, sep_token_id=tok.eos_token_id)
    cfg = ModernBertConfig(vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=hidden_size * 2,
                           max_position_embeddings=512, classifier_pooling="mean",
                           num_labels=len(labels), id2label=dict(enumerate(labels)),
                           label2id={v: i for i, v in enumerate(labels)}, **ids)
    torch.manual_seed(seed)
    return ModernBertForSequenceClassification(cfg), tok


class PersonaClassifier:
    """A trained sequence classifier used as a `PersonaScorer`."""

    def __init__(self, model, tokenizer, max_length: int = 256, batch_size: int = 32,
                 name: str = "classifier"):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.batch_size, self.name = max_length, batch_size, name
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]

    def predict(self, texts: Sequence[str]) -> list[str]:
        import torch

        out: list[str] = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                enc = {k: v.to(self.model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                out += [self.labels[j] for j in self.model(**enc).logits.argmax(-1).tolist()]
        return out

    def score_many(self, pairs: Sequence[tuple[str, str]]) -> list[ReplyScore]:
        return [ReplyScore(persona=p) for p in self.predict([r for _, r in pairs])]

    def score(self, prompt: str, reply: str) -> ReplyScore:
        return self.score_many([(prompt, reply)])[0]

    def evaluate(self, rows: Sequence[Labelled]) -> dict:
        """Accuracy (with Wilson CI) and macro-F1 on labelled rows."""
        return accuracy_macro_f1([r.label for r in rows], self.predict([r.text for r in rows]))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path

    @classmethod
    def load(cls, path: str | Path, **kw: Any) -> "PersonaClassifier":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        return cls(AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True),
                   AutoTokenizer.from_pretrained(path), name=f"classifier:{Path(path).name}", **kw)


def train_classifier(train: Sequence[Labelled], model: str | None = None, epochs: int = 3,
                     lr: float = 1e-3, batch_size: int = 16, max_length: int = 256, seed: int = 0,
                     progress: bool = True) -> PersonaClassifier:
    """Fine-tune `model` (a local path / Hub id), or a tiny ModernBERT when None, on `train`."""
    import torch

    if not train:
        raise ValueError("train_classifier needs at least one labelled row")
    labels = sorted({r.label for r in train})
    if len(labels) < 2:
        raise ValueError(f"need 2+ labels to classify, got {labels}")
    if model is None:
        net, tok = build_tiny_classifier([r.text for r in train], labels, seed=seed)
    else:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model)
        net = AutoModelForSequenceClassification.from_pretrained(
            model, use_safetensors=True, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={v: i for i, v in enumerate(labels)}, ignore_mismatched_sizes=True)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        net.config.pad_token_id = tok.pad_token_id
    to_id = {v: i for i, v in enumerate(labels)}
    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    net.train()
    order = list(range(len(train)))
    steps = epochs * ((len(order) + batch_size - 1) // batch_size)
    bar = tqdm(total=steps, desc="classifier", disable=not progress)
    for _ in range(epochs):
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            batch = [train[j] for j in order[i:i + batch_size]]
            enc = tok([r.text for r in batch], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
            y = torch.tensor([to_id[r.label] for r in batch])
            logits = net(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return PersonaClassifier(net, tok, max_length=max_length)


def train_and_evaluate(rows: Sequence[Labelled], out_dir: str | Path | None = None,
                       test_frac: float = 0.2, seed: int = 0, **train_kw: Any
                       ) -> tuple[PersonaClassifier, dict]:
    """Split, train, report held-out accuracy / macro-F1; saves model + metrics when `out_dir`."""
    train, test = split(rows, test_frac, seed)
    clf = train_classifier(train, seed=seed, **train_kw)
    metrics = {"train_n": len(train), **clf.evaluate(test)}
    if out_dir is not None:
        clf.save(out_dir)
        atomic_write_json(Path(out_dir) / "metrics.json", metrics)
    return clf, metrics
