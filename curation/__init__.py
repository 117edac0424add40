"""Curation: trace sources, per-trace checks, contracts and exact-ratio mixes.

Owns the trace schema, loading sources (CHAMP, hub, files, teacher generation), the check suite
and its runner, sharded curation (local or on Ray actors), Great Expectations contracts, mixing
with manifests, and the ``problems:``, ``sources:``, ``curate:``, ``groups:`` and ``mix:`` params. Imports the lower layer
(:mod:`common`, :mod:`generation`, :mod:`grading`) only.
"""
