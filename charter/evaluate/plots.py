"""PNG plots for `eval.json` and the run report: one function per figure, each reading plain dicts."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def _subplots(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1, **kw):
    """A figure outside pyplot: no global backend to pick and no open figure to close, so importing
    this module changes nothing for a caller that uses pyplot itself (a notebook)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _bar_ci(ax, names, props, offset=0.0, width=0.8, label=None):
    """Bars of `Proportion` dicts ({k, n, value, lo, hi}) with their intervals as error bars."""
    vals = [p["value"] if p["n"] else 0.0 for p in props]
    err = [[v - p["lo"] for v, p in zip(vals, props)], [p["hi"] - v for v, p in zip(vals, props)]]
    xs = [i + offset for i in range(len(names))]
    ax.bar(xs, vals, width=width, yerr=err, capsize=3, label=label)
    return xs


def plot_adherence(section: dict, path: Path) -> Path:
    systems = section["systems"]
    fig, ax = _subplots((max(4, 1.2 * len(systems)), 3.5))
    _bar_ci(ax, [s["system"] for s in systems], systems)
    ax.set_xticks(range(len(systems)), [f"{s['system']}\n(n={s['n']})" for s in systems], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"share in character ({systems[0]['persona']})" if systems else "share in character")
    ax.set_title("Adherence (Wilson 95% CI)", fontsize=10)
    return _save(fig, path)


def plot_shares(shares: dict[str, dict], title: str, ylabel: str, path: Path) -> Path:
    """One bar per label with its Wilson interval; `shares` maps a label to a `Proportion` dict."""
    names = list(shares)
    fig, ax = _subplots((max(4, 1.3 * len(names)), 3))
    _bar_ci(ax, names, list(shares.values()))
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def plot_curves(curves: dict[str, list[dict]], keys: list[str], title: str, path: Path) -> Path:
    """Training curves: one panel per metric in `keys`, one line per run (e.g. per persona)."""
    fig, axes = _subplots((4 * len(keys), 3), 1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, rows in curves.items():
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), label=name)
        ax.set_title(f"{title}: {key}")
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def plot_robustness(section: dict, path: Path) -> Path:
    keys = list(section["suffixes"]) + ["overall"]
    blocks = [section["suffixes"][k] for k in section["suffixes"]] + [section["overall"]]
    systems = list(blocks[0]["systems"]) if blocks else []
    fig, ax = _subplots((max(6, 0.8 * len(keys) * max(1, len(systems))), 3.8))
    w = 0.8 / max(1, len(systems))
    for j, s in enumerate(systems):
        _bar_ci(ax, keys, [b["systems"][s] for b in blocks], offset=(j - (len(systems) - 1) / 2) * w,
                width=w, label=s)
    if "multiturn" in section:
        mt = section["multiturn"]
        ax.axhline(mt["value"] if mt["n"] else 0, ls="--", c="k", lw=1,
                   label=f"multi-turn (turn 1 by {mt['turn1_by']})")
    ax.set_xticks(range(len(keys)), keys, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share in character")
    ax.set_title("Robustness to adversarial suffixes (Wilson 95% CI)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_robustness_matrix(rates: dict[str, dict[str, dict]], path: Path, title: str = "",
                           ylabel: str = "share in character") -> Path:
    """Systems x attack kinds: in-character share under each attack (kind -> system -> proportion
    with lo/hi, e.g. `run_suite(...)["pooled"]["robustness"]`), one bar per system, Wilson 95% CIs.
    Any figures grouped the same way draw alike (the method table: figure -> system -> share)."""
    kinds = list(rates)
    systems = list(dict.fromkeys(s for k in kinds for s in rates[k]))
    fig, ax = _subplots((min(12, max(6, 0.3 * len(kinds) * max(1, len(systems)))), 3.8))
    w = 0.8 / max(1, len(systems))
    for j, s in enumerate(systems):
        props = [rates[k].get(s, {"value": 0.0, "lo": 0.0, "hi": 0.0, "n": 0}) for k in kinds]
        _bar_ci(ax, kinds, props, offset=(j - (len(systems) - 1) / 2) * w, width=w, label=s)
    ax.set_xticks(range(len(kinds)), kinds, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Robustness per attack kind (Wilson 95% CI)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the axes: never over a bar
    return _save(fig, path)


def plot_elo(section: dict, path: Path, top: int = 20) -> Path:
    """Before vs after Elo of the traits rated in both runs (CI bars), top movers labelled."""
    b, a = section["before"]["elo"], section["after"]["elo"]
    common = sorted(set(b) & set(a))
    fig, ax = _subplots((5, 5))
    if common:
        xs, ys = [b[t]["rating"] for t in common], [a[t]["rating"] for t in common]
        # the bootstrap CI is over game order, so it need not contain the one-order rating: clip at 0
        def err(r: dict) -> list[list[float]]:
            return [[max(0.0, r[t]["rating"] - r[t]["lo"]) for t in common],
                    [max(0.0, r[t]["hi"] - r[t]["rating"]) for t in common]]

        ax.errorbar(xs, ys, xerr=err(b), yerr=err(a), fmt="o", ms=3, alpha=0.6, lw=0.5)
        lo, hi = min(xs + ys) - 10, max(xs + ys) + 10
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        movers = sorted(common, key=lambda t: -abs(a[t]["rating"] - b[t]["rating"]))[:top // 2]
        for t in movers:
            ax.annotate(t, (b[t]["rating"], a[t]["rating"]), fontsize=7)
    else:
        ax.text(0.5, 0.5, "no trait rated in both runs\n(see unparseable / disagree counts)",
                ha="center", va="center", transform=ax.transAxes)
    rho = section["comparison"]["spearman_rho"]
    ax.set_xlabel(f"Elo before ({section['before']['system']}, {section['before']['games']} games)")
    ax.set_ylabel(f"Elo after ({section['after']['system']}, {section['after']['games']} games)")
    ax.set_title(f"Revealed preferences, Spearman rho = {rho:.2f}" if rho == rho else "Revealed preferences")
    return _save(fig, path)


def plot_capability(section: dict, path: Path) -> Path:
    """Perplexity before/after, and multiple-choice accuracy deltas with CIs."""
    mc = section.get("multiple_choice", {})
    fig, axes = _subplots((8, 3.5), 1, 2)
    if "perplexity" in section:
        p = section["perplexity"]
        axes[0].bar(["before", "after"], [p["before"]["perplexity"], p["after"]["perplexity"]],
                    color=["C0", "C1"])
        bs = p["nll_per_text_bootstrap"]
        axes[0].set_title(f"Perplexity (delta {p['delta']:+.2f})\nNLL/token diff {bs['diff']:+.3f} "
                          f"[{bs['lo']:+.3f}, {bs['hi']:+.3f}]", fontsize=9)
    else:
        axes[0].axis("off")
    names = [f"{n}:{m}" for n in mc for m in mc[n]]
    for j, when in enumerate(["before", "after"]):
        props = [mc[n][m][when] for n in mc for m in mc[n]]
        _bar_ci(axes[1], names, props, offset=(j - 0.5) * 0.4, width=0.4, label=when)
    axes[1].set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    axes[1].set_ylim(0, 1.05)
    axes[1].set_title("Multiple choice accuracy (Wilson 95% CI)", fontsize=9)
    if names:
        axes[1].legend(fontsize=7)
    return _save(fig, path)
