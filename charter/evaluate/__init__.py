"""Evaluations of a character model, run without the constitution (SPEC section 6).

- `base`: `ReplyScore`, `PersonaScorer` -- the one interface judges, classifiers and the toy scorer share
- `stats`: Wilson CI, McNemar, paired bootstrap, Elo (+ bootstrap over order), Spearman, macro-F1
- `judges`: strict LLM judge on any Generator, both-order pairwise verdicts, JSONL cache
- `classifier`: persona classifier (any HF sequence-classification model; tiny ModernBERT offline)
- `systems`: `System` = generator + optional system prompt
- `adherence`, `robustness`, `preferences`, `coherence`, `capability`: the evaluations
- `runner`: `EvalConfig` and `run_eval` behind `charter eval`; `plots`: the PNGs
"""
