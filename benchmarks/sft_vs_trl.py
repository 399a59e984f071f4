"""Charter vs TRL 1.16 SFT (assistant-only loss): tokens/s and peak RSS, same model, data and settings.

    python benchmarks/sft_vs_trl.py [--sizes 1m,50m | --model DIR] [--lora] [--steps 4] [--batch 4]

The set-up, measurement and output format are those of `dpo_vs_trl.py` (shared code there).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dpo_vs_trl import main  # noqa: E402

if __name__ == "__main__":
    main("sft")
