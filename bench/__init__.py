"""`make bench`: every speed and memory figure measured against a peer in the same run.

Each benchmark is a module here with ``run(quick: bool, device: str) -> dict``
returning dotted result keys (``model_step.ratio`` ...). Ratios are written so
that higher is better for us. The harness writes ``build/bench/results.json``
and ``build/bench/results.md`` (machine, versions, date, table), which the
README includes.
"""

BENCHMARKS = ["model_step", "efficiency", "decode", "extract_memory", "kmeans", "tinycook", "course"]
