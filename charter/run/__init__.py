"""`charter run`: the engine (cache and resume), the typed run config, the stage list, and the run-dir layout."""
