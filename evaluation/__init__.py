"""Evaluation: benchmarks, one model's evaluation run, metrics and the report.

Owns benchmark loaders, :func:`evaluation.run.evaluate` (generation through the shared sample
store, grading, scores), pass@k / maj@k, the ΔLong / ΔLarge report and the ``eval:`` and
``report:`` params. Imports the lower layer (:mod:`common`, :mod:`generation`, :mod:`grading`) only.
"""
