"""Persona classifier: fine-tune a sequence-classification model to tell personas apart.

A judge is slow and costs queries; a small classifier trained on labelled generations
(teacher replies = the persona, student replies = "neutral", or several personas' replies)
scores thousands of replies in seconds. The paper used ModernBERT-base; any
`AutoModelForSequenceClassification` checkpoint works (`model=` a path). Offline, we build a
tiny ModernBERT with a BPE tokenizer trained on the texts themselves. With `encoder=` a
sentence encoder's folder (e.g. all-MiniLM-L6-v2), the encoder stays frozen and only a linear
head is trained on its mean-pooled embeddings: with a few hundred labelled replies, fine-tuning
a whole encoder would mostly learn the training rows.

The trained model is a `PersonaScorer`, so adherence and robustness use it like any judge.
It reads the reply only: the prompt carries no persona.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import (AutoModel, AutoModelForSequenceClassification, AutoTokenizer, ModernBertConfig,
                          ModernBertForSequenceClassification)

from charter.data.jsonl import DataError, atomic_write_json, read_jsonl
from charter.data.sources import iter_records
from charter.evaluate.base import NEUTRAL, ReplyScore
from charter.evaluate.stats import accuracy_macro_f1
from charter.tiny import build_tokenizer


@dataclass
class Labelled:
    text: str
    label: str
    group: str | None = None  # rows of one group (e.g. replies to one prompt) stay on one side of a split


def read_labelled(path: str | Path) -> list[Labelled]:
    """JSONL of `{"text"|"reply": str, "label"|"persona": str}`."""
    out = []
    for lineno, obj in iter_records(path, "JSONL {\"text\", \"label\"}", allow_empty=False):
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
    for lineno, obj in iter_records(path):
        for field, label in (("chosen", persona), ("rejected", NEUTRAL)):
            if field not in obj:
                raise DataError(f"{path}:{lineno}: pair has no {field!r} field")
            out.append(Labelled(last_text(obj[field]), label))
    return out


def labelled_from_answers(teacher: str | Path, student: str | Path, persona: str) -> list[Labelled]:
    """A run's `answers.jsonl` pair -> teacher answers show `persona`, student answers are neutral;
    grouped by prompt, so a split never tests on a prompt it trained on. Blank answers are skipped."""
    return [Labelled(a["text"], label, group=a["prompt"])
            for path, label in ((teacher, persona), (student, NEUTRAL))
            for a in read_jsonl(path) if a["text"].strip()]


def split(rows: Sequence[Labelled], test_frac: float = 0.2, seed: int = 0
          ) -> tuple[list[Labelled], list[Labelled]]:
    """Stratified, seeded train/test split (each label keeps roughly `test_frac` held out).
    Rows with a `group` are split by group instead, so no test reply shares its prompt with a
    training reply."""
    rng = random.Random(seed)
    if any(r.group is not None for r in rows):
        groups = sorted({str(r.group) for r in rows})
        rng.shuffle(groups)
        held = set(groups[:max(1, round(len(groups) * test_frac))] if len(groups) > 1 else [])
        return [r for r in rows if str(r.group) not in held], [r for r in rows if str(r.group) in held]
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


class LabelScorer:
    """A `PersonaScorer` from any `predict(texts) -> labels`: it reads the reply only."""

    def predict(self, texts: Sequence[str]) -> list[str]:
        raise NotImplementedError

    def score_many(self, pairs: Sequence[tuple[str, str]], progress: bool = False) -> list[ReplyScore]:
        return [ReplyScore(persona=p) for p in self.predict([r for _, r in pairs])]

    def score(self, prompt: str, reply: str) -> ReplyScore:
        return self.score_many([(prompt, reply)])[0]

    def evaluate(self, rows: Sequence[Labelled]) -> dict:
        """Accuracy (with Wilson CI) and macro-F1 on labelled rows."""
        return accuracy_macro_f1([r.label for r in rows], self.predict([r.text for r in rows]))


class PersonaClassifier(LabelScorer):
    """A trained sequence classifier used as a `PersonaScorer`."""

    def __init__(self, model, tokenizer, max_length: int = 256, batch_size: int = 32,
                 name: str = "classifier"):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.batch_size, self.name = max_length, batch_size, name
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]

    def predict(self, texts: Sequence[str]) -> list[str]:
        out: list[str] = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                enc = {k: v.to(self.model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                out += [self.labels[j] for j in self.model(**enc).logits.argmax(-1).tolist()]
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path

    @classmethod
    def load(cls, path: str | Path, **kw: Any) -> "PersonaClassifier":
        return cls(AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True),
                   AutoTokenizer.from_pretrained(path), name=f"classifier:{Path(path).name}", **kw)


def train_classifier(train: Sequence[Labelled], model: str | None = None, epochs: int = 3,
                     lr: float = 1e-3, batch_size: int = 16, max_length: int = 256, seed: int = 0,
                     progress: bool = True) -> PersonaClassifier:
    """Fine-tune `model` (a local path / Hub id), or a tiny ModernBERT when None, on `train`."""
    if not train:
        raise ValueError("train_classifier needs at least one labelled row")
    labels = sorted({r.label for r in train})
    if len(labels) < 2:
        raise ValueError(f"need 2+ labels to classify, got {labels}")
    if model is None:
        net, tok = build_tiny_classifier([r.text for r in train], labels, seed=seed)
    else:
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


def mean_pool(hidden, mask):
    """Mean of the token states the attention mask keeps: padding never moves an embedding."""
    keep = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1e-9)


class EncoderClassifier(LabelScorer):
    """A frozen sentence encoder (mean-pooled, L2-normalised, as sentence-transformers' MiniLM
    models are used) with a trained linear head. Saved as the head plus the encoder's path."""

    def __init__(self, encoder: str | Path, head, labels: Sequence[str], max_length: int = 256,
                 batch_size: int = 32):
        self.encoder_path = str(encoder)
        self.tokenizer = AutoTokenizer.from_pretrained(encoder)
        self.encoder = AutoModel.from_pretrained(encoder, use_safetensors=True).eval()
        self.head, self.labels = head.eval(), list(labels)
        self.max_length, self.batch_size = max_length, batch_size
        self.name = f"encoder:{Path(encoder).name}"

    def embed(self, texts: Sequence[str]):
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                hidden = self.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                out.append(torch.nn.functional.normalize(mean_pool(hidden, enc["attention_mask"]), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.encoder.config.hidden_size)

    def predict(self, texts: Sequence[str]) -> list[str]:
        with torch.no_grad():
            return [self.labels[j] for j in self.head(self.embed(texts)).argmax(-1).tolist()]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(path / "head.safetensors"))
        atomic_write_json(path / ENCODER_HEAD, {"encoder": self.encoder_path, "labels": self.labels,
                                                "max_length": self.max_length})
        return path

    @classmethod
    def load(cls, path: str | Path, **kw: Any) -> "EncoderClassifier":
        meta = json.loads((Path(path) / ENCODER_HEAD).read_text())
        state = load_file(str(Path(path) / "head.safetensors"))
        head = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        head.load_state_dict(state)
        return cls(meta["encoder"], head, meta["labels"], max_length=meta["max_length"], **kw)


ENCODER_HEAD = "encoder_head.json"  # marks a saved EncoderClassifier folder


def fit_linear_head(x, y, n_labels: int, steps: int = 300, lr: float = 0.1, l2: float = 1e-3, seed: int = 0):
    """Multinomial logistic regression on fixed embeddings, full batch (a few hundred rows)."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], n_labels)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(head(x), y) + l2 * head.weight.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head


def train_encoder_classifier(train: Sequence[Labelled], encoder: str | Path, seed: int = 0,
                             max_length: int = 256, **head_kw: Any) -> EncoderClassifier:
    """Embed `train` once with the frozen `encoder`, then fit the linear head on the embeddings."""
    labels = sorted({r.label for r in train})
    if len(labels) < 2:
        raise ValueError(f"need 2+ labels to classify, got {labels}")
    clf = EncoderClassifier(encoder, torch.nn.Linear(1, len(labels)), labels, max_length=max_length)
    y = torch.tensor([labels.index(r.label) for r in train])
    clf.head = fit_linear_head(clf.embed([r.text for r in train]), y, len(labels), seed=seed, **head_kw).eval()
    return clf


def load_classifier(path: str | Path) -> LabelScorer:
    """A saved classifier folder: an encoder + head, or a fine-tuned sequence classifier."""
    if (Path(path) / ENCODER_HEAD).exists():
        return EncoderClassifier.load(path)
    return PersonaClassifier.load(path)


def train_and_evaluate(rows: Sequence[Labelled], out_dir: str | Path | None = None,
                       test_frac: float = 0.2, seed: int = 0, encoder: str | Path | None = None,
                       **train_kw: Any) -> tuple[LabelScorer, dict]:
    """Split, train, report held-out accuracy / macro-F1; saves model + metrics when `out_dir`.
    With `encoder`, a linear head on that frozen sentence encoder; else `train_classifier`."""
    train, test = split(rows, test_frac, seed)
    if encoder is not None:
        clf: LabelScorer = train_encoder_classifier(train, encoder, seed=seed, **train_kw)
    else:
        clf = train_classifier(train, seed=seed, **train_kw)
    metrics = {"train_n": len(train), **clf.evaluate(test)}
    if out_dir is not None:
        clf.save(out_dir)
        atomic_write_json(Path(out_dir) / "metrics.json", metrics)
    return clf, metrics
