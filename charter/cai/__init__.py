"""Constitutional AI: principles, SL-CAI critique/revision data, AI-feedback labels,
constitutional inference, and base-model bootstrapping (docs/cai.md)."""
