"""Stats against published / hand-computed values."""
from __future__ import annotations

import math

import pytest

from charter.evaluate.stats import (elo, elo_bootstrap, mcnemar, mcnemar_paired, paired_bootstrap,
                                    proportion, rankdata, spearman, wilson_ci)


def test_wilson_81_of_100_matches_closed_form_and_published_value():
    lo, hi = wilson_ci(81, 100)
    z, p, n = 1.959963984540054, 0.81, 100
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert lo == pytest.approx(centre - half, abs=1e-12)
    assert hi == pytest.approx(centre + half, abs=1e-12)
    assert (round(lo, 4), round(hi, 4)) == (0.7222, 0.8749)  # commonly quoted Wilson interval


def test_wilson_edges():
    lo, hi = wilson_ci(0, 10)
    assert lo == 0.0 and 0.27 < hi < 0.31  # 0/10 -> [0, 0.2775]
    lo, hi = wilson_ci(10, 10)
    assert hi == 1.0 and 0.69 < lo < 0.73
    assert wilson_ci(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_ci(11, 10)
    assert proportion(3, 4).value == 0.75


def test_mcnemar_agresti_presidential_approval():
    # Agresti, Categorical Data Analysis, Table 10.1: 794 / 150 / 86 / 570.
    # Published McNemar z^2 = (86-150)^2/(86+150) = 17.36 (uncorrected).
    r = mcnemar(150, 86)
    assert r.chi2_uncorrected == pytest.approx(17.356, abs=1e-3)
    assert r.chi2 == pytest.approx(63 ** 2 / 236, abs=1e-12)  # continuity corrected: 16.82
    assert r.p_chi2_uncorrected == pytest.approx(3.1e-5, rel=0.05)
    assert r.p_exact < 1e-4


def test_mcnemar_exact_small_table_by_hand():
    # b=1, c=6: two-sided exact p = 2 * (C(7,0)+C(7,1)) / 2^7 = 16/128
    r = mcnemar(1, 6)
    assert r.p_exact == pytest.approx(0.125, abs=1e-12)
    assert r.chi2 == pytest.approx((5 - 1) ** 2 / 7)
    assert r.p_chi2 == pytest.approx(math.erfc(math.sqrt(16 / 7 / 2)))
    assert mcnemar(3, 3).p_exact == 1.0
    assert mcnemar(0, 0).p_exact == 1.0


def test_mcnemar_from_paired_outcomes():
    before = [True, True, False, False, True]
    after = [True, False, True, True, True]
    r = mcnemar_paired(before, after)
    assert (r.b, r.c) == (1, 2)


def test_elo_hand_computed_sequence():
    # A beats B, B beats C, A draws C; everyone starts at 1000, K=32.
    # 1) E=0.5: A=1016, B=984.
    # 2) E_B = 1/(1+10^(16/400)) = 0.476991: B = 984+32*0.523009 = 1000.7363, C = 983.2637
    # 3) E_A = 1/(1+10^((983.2637-1016)/400)) = 0.546972: A = 1016 - 32*0.046972 = 1014.4969,
    #    C = 984.7668
    r = elo([("A", "B", 1.0), ("B", "C", 1.0), ("A", "C", 0.5)])
    assert r["A"] == pytest.approx(1014.4969, abs=2e-3)
    assert r["B"] == pytest.approx(1000.7363, abs=2e-3)
    assert r["C"] == pytest.approx(984.7668, abs=2e-3)
    assert sum(r.values()) == pytest.approx(3000)  # Elo is zero-sum


def test_elo_bootstrap_order_ci():
    same = [("A", "B", 1.0)] * 5  # order cannot matter: degenerate interval
    r = elo_bootstrap(same, samples=50, seed=1)
    assert r["A"].lo == pytest.approx(r["A"].hi) == pytest.approx(r["A"].rating)
    assert r["A"].games == 5
    mixed = [("A", "B", 1.0), ("B", "C", 1.0), ("C", "A", 1.0), ("A", "B", 0.0)] * 3
    r1 = elo_bootstrap(mixed, samples=100, seed=7)
    r2 = elo_bootstrap(mixed, samples=100, seed=7)
    assert r1 == r2  # seeded
    assert all(v.lo < v.hi for v in r1.values())  # order matters here
    assert all(v.lo <= v.mean <= v.hi for v in r1.values())


def test_spearman_wikipedia_iq_tv_example():
    iq = [106, 100, 86, 101, 99, 103, 97, 113, 112, 110]
    tv = [7, 27, 2, 50, 28, 29, 20, 12, 6, 17]
    assert spearman(iq, tv) == pytest.approx(-29 / 165, abs=1e-12)
    assert rankdata([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)


def test_paired_bootstrap():
    a = [0.0, 1.0, 2.0, 3.0]
    r = paired_bootstrap(a, [x + 0.5 for x in a], samples=500, seed=0)
    assert r.diff == pytest.approx(0.5) and r.lo == pytest.approx(0.5) and r.hi == pytest.approx(0.5)
    assert r.p == 0.0
    r = paired_bootstrap([0, 0, 0, 0, 0, 0], [1, -1, 1, -1, 1, -1], samples=1000, seed=0)
    assert r.lo < 0 < r.hi and r.p > 0.5
    assert paired_bootstrap(a, a[::-1], seed=3) == paired_bootstrap(a, a[::-1], seed=3)
    with pytest.raises(ValueError):
        paired_bootstrap([1, 2], [1])


def test_accuracy_macro_f1_by_hand():
    from charter.evaluate.stats import accuracy_macro_f1

    r = accuracy_macro_f1(["a", "a", "b", "b"], ["a", "b", "b", None])
    # a: P=1, R=1/2, F1=2/3 ; b: P=1/2, R=1/2, F1=1/2
    assert r["accuracy"] == 0.5 and r["n"] == 4
    assert r["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
