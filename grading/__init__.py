"""Grading: answer extraction, reference variants, equivalence and the LLM judge.

Owns how a response's final answer is found (:mod:`grading.extract`), what a reference accepts
(:mod:`grading.answers`), the rule grader with its killable math-verify workers
(:mod:`grading.grader`) and the judge for rule misses with its verdict cache (:mod:`grading.judge`).
Curation's correctness check, teacher rejection sampling, evaluation and ``mixdistill grade`` all
grade here. Imports :mod:`common` and :mod:`generation` (the judge's engine).
"""
