"""How Easel's own models were made and measured: training, evaluation, data builders, benchmarks.

Not part of the installed package (the wheel holds `bot` and `models` only): run it from a
checkout, e.g. `python -m research.restore.train`. It may import `models`; `models` never imports it.
"""
