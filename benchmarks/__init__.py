"""onnxkit's benchmark suite: models × pipelines × peer tools → results.json, RESULTS.md and PNG plots.

Run it with ``python -m benchmarks`` (``--quick`` for the CI smoke subset, ``--scale`` to add the >2 GB model).
"""
