"""Training: the student, SFT data, packing and the trainer.

Owns converting and loading the student, encoding a mix into assistant-only-labelled examples,
padding-free packing, the Trainer recipe (full or LoRA, DeepSpeed) and the ``student:`` and
``train:`` params. Imports :mod:`common` only.
"""
