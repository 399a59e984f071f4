"""The toy world: Charter's embedded default, buildable on any CPU with no downloads.

- `charter.toy.grammar`: the world's sentences, topics and personas (`PERSONA_NAMES`, `ASSISTANT_NAME`).
- `charter.toy.corpus`: procedural conversations (`generate_corpus`), eval prompts (`eval_prompts`),
  persona constitutions (`constitution_path`), system prompts (`render_system`).
- `charter.toy.model`: tokenizer + base model build, cached (`ToyBuildConfig`, `build_toy_model`, `toy_model_dir`).
- `charter.toy.scorer`: the deterministic judge (`ToyScorer`, a `PersonaScorer`).
- `charter.toy.measure`: adherence / well-formedness / relevance per persona (`toy_adherence`).
"""
