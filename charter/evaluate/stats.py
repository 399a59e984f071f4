"""The statistics every evaluation reports with: intervals, paired tests, Elo, rank correlation.

Pure functions on plain numbers, stdlib + numpy only, so they are easy to check against
textbook values. Every figure in `eval.json` comes with its interval and n from here.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Hashable, Sequence

import numpy as np


def z_value(confidence: float = 0.95) -> float:
    """Two-sided normal quantile: 1.959964 for 95%."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion; stays inside [0, 1] and is sane at 0/n and n/n."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return (0.0, 1.0)
    z = z_value(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the edges, no 1e-17 noise
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


@dataclass
class Proportion:
    """A share with its Wilson interval: what eval.json stores for adherence-style figures."""

    k: int
    n: int
    value: float
    lo: float
    hi: float

    def to_dict(self) -> dict:
        return asdict(self)


def proportion(successes: int, n: int, confidence: float = 0.95) -> Proportion:
    lo, hi = wilson_ci(successes, n, confidence)
    return Proportion(successes, n, successes / n if n else float("nan"), lo, hi)


def proportion_of_unique(successes: int, n: int, unique: int, confidence: float = 0.95) -> dict:
    """A share over `n` scored rows of which only `unique` are distinct replies (one reply scored
    for several personas): the rate over rows, the Wilson interval over the distinct replies."""
    rate = successes / n if n else float("nan")
    lo, hi = wilson_ci(rate * unique, unique, confidence) if n else (0.0, 1.0)
    return {"k": successes, "n": n, "n_unique": unique, "value": rate, "lo": lo, "hi": hi}


def _binom_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exact with integers."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n


def chi2_sf_1df(x: float) -> float:
    """Upper tail of a chi-square with 1 degree of freedom: P(Z^2 > x) = erfc(sqrt(x/2))."""
    return math.erfc(math.sqrt(max(x, 0.0) / 2))


@dataclass
class McNemar:
    b: int  # before right, after wrong (or: system A only)
    c: int  # before wrong, after right (or: system B only)
    p_exact: float  # two-sided exact binomial test on the discordant pairs
    chi2: float  # continuity-corrected statistic (|b-c|-1)^2/(b+c)
    p_chi2: float
    chi2_uncorrected: float  # (b-c)^2/(b+c), the form many textbooks print
    p_chi2_uncorrected: float

    def to_dict(self) -> dict:
        return asdict(self)


def mcnemar(b: int, c: int) -> McNemar:
    """McNemar's test from the two discordant counts of a paired 2x2 table.

    Only pairs that changed carry information; the exact test asks whether b vs c
    looks like a fair coin.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return McNemar(b, c, 1.0, 0.0, 1.0, 0.0, 1.0)
    p_exact = min(1.0, 2 * _binom_cdf_half(min(b, c), n))
    chi2 = (max(abs(b - c) - 1, 0)) ** 2 / n
    chi2_u = (b - c) ** 2 / n
    return McNemar(b, c, p_exact, chi2, chi2_sf_1df(chi2), chi2_u, chi2_sf_1df(chi2_u))


def mcnemar_paired(before: Sequence[bool], after: Sequence[bool]) -> McNemar:
    """McNemar on per-item correctness before and after (same items, same order)."""
    if len(before) != len(after):
        raise ValueError(f"paired samples differ in length: {len(before)} vs {len(after)}")
    b = sum(1 for x, y in zip(before, after) if x and not y)
    c = sum(1 for x, y in zip(before, after) if y and not x)
    return mcnemar(b, c)


@dataclass
class BootstrapDiff:
    mean_a: float
    mean_b: float
    diff: float  # mean(b - a)
    lo: float
    hi: float
    p: float  # two-sided bootstrap p-value for diff == 0
    n: int
    samples: int

    def to_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], samples: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> BootstrapDiff:
    """Percentile CI for mean(b - a), resampling items (pairs stay together); seeded."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples must be 1-D and equal length, got {x.shape} vs {y.shape}")
    n = len(x)
    if n == 0:
        raise ValueError("paired_bootstrap needs at least one pair")
    d = y - x
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    means = d[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    # two-sided: how often the resampled mean falls on the other side of zero
    p = min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean()))
    return BootstrapDiff(float(x.mean()), float(y.mean()), float(d.mean()), float(lo), float(hi),
                         float(p), n, samples)


# ---- Elo -------------------------------------------------------------------------------------

Match = tuple[Hashable, Hashable, float]  # (a, b, score of a: 1 win, 0 loss, 0.5 draw)


def elo_expected(ra: float, rb: float) -> float:
    return 1.0 / (1.0 + 10 ** ((rb - ra) / 400))


def elo(matches: Sequence[Match], k: float = 32.0, start: float = 1000.0,
        players: Sequence[Hashable] = ()) -> dict[Hashable, float]:
    """Sequential Elo: each match moves both players by k * (score - expected)."""
    r: dict[Hashable, float] = {p: start for p in players}
    for a, b, s in matches:
        if not 0 <= s <= 1:
            raise ValueError(f"match score must be in [0, 1], got {s}")
        ra, rb = r.setdefault(a, start), r.setdefault(b, start)
        e = elo_expected(ra, rb)
        r[a] = ra + k * (s - e)
        r[b] = rb - k * (s - e)
    return r


@dataclass
class EloRating:
    rating: float  # Elo over the matches in their recorded order
    mean: float  # mean over shuffled orders
    lo: float
    hi: float
    games: int

    def to_dict(self) -> dict:
        return asdict(self)


def elo_bootstrap(matches: Sequence[Match], samples: int = 200, seed: int = 0, k: float = 32.0,
                  start: float = 1000.0, confidence: float = 0.95) -> dict[Hashable, EloRating]:
    """Elo with percentile CIs over comparison order (Elo depends on the order games arrive)."""
    players = sorted({m[0] for m in matches} | {m[1] for m in matches}, key=str)
    games = {p: 0 for p in players}
    for a, b, _ in matches:
        games[a] += 1
        games[b] += 1
    base = elo(matches, k, start, players)
    rng = random.Random(seed)
    order = list(matches)
    runs = np.empty((samples, len(players)))
    for s in range(samples):
        rng.shuffle(order)
        r = elo(order, k, start, players)
        runs[s] = [r[p] for p in players]
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(runs, [alpha, 1 - alpha], axis=0) if samples else (runs, runs)
    return {p: EloRating(base[p], float(runs[:, i].mean()) if samples else base[p],
                         float(lo[i]) if samples else base[p], float(hi[i]) if samples else base[p],
                         games[p]) for i, p in enumerate(players)}


# ---- rank correlation --------------------------------------------------------------------------

def rankdata(values: Sequence[float]) -> list[float]:
    """Ranks starting at 1, ties get their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson correlation of the (tie-averaged) ranks."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs equal lengths, got {len(x)} vs {len(y)}")
    if len(x) < 2:
        return float("nan")
    rx, ry = np.asarray(rankdata(x)), np.asarray(rankdata(y))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den else float("nan")


def accuracy_macro_f1(y_true: Sequence[Hashable], y_pred: Sequence[Hashable | None]) -> dict:
    """Accuracy and macro-F1 over the true labels' classes; a None prediction is always wrong."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    n = len(y_true)
    correct = sum(t == p for t, p in zip(y_true, y_pred))
    per = {}
    for c in sorted(set(y_true), key=str):
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        per[str(c)] = {"precision": prec, "recall": rec,
                       "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0, "support": tp + fn}
    lo, hi = wilson_ci(correct, n) if n else (float("nan"), float("nan"))
    return {"accuracy": correct / n if n else float("nan"), "lo": lo, "hi": hi, "n": n,
            "macro_f1": float(np.mean([v["f1"] for v in per.values()])) if per else float("nan"),
            "per_label": per}
