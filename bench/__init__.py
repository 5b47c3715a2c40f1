"""Ketch benchmarks: each one measures Ketch and a baseline side by side, in the same run.

Run them all with ``.venv/bin/python -m bench`` (``--only NAME``, ``--quick``). Each writes
``bench/results/NAME.json``; then ``docs/benchmarks.md`` is regenerated from every result
file there. Timings live here, never in the tests (house rule 8).

Modules:

- ``context``: where a run works, and how it runs the ``ketch`` command
- ``machine``: the facts about the machine a result was measured on
- ``report``: the benchmark record type, result files, and the markdown page
- one module per benchmark: ``convert_speed``, ``bootstrap_lookup``, ``stored_bytes``,
  ``cdc_vs_fixed``
"""
