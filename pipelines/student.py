"""Stage ``student``: convert the configured student once into ``paths.student``.

Reads ``student:`` (with the preset applied: ``preset: paper`` swaps in ``presets.paper.student``),
writes a plain transformers checkpoint (safetensors, tokenizer with chat template, config) plus
``mixdistill_student.json`` (source spec, GGUF sha256 or revision). Every later stage loads that
directory like any hub model.

    python -m pipelines.student [--force]
"""
from __future__ import annotations

import sys

from pipelines import stage
from pipelines.params import load_params
from training.student import convert_student


def main(argv: list[str] | None = None) -> int:
    ap = stage.parser(__doc__)
    ap.add_argument("--force", action="store_true", help="convert even if the output is up to date")
    args = ap.parse_args(argv)

    def body():
        params = load_params(args.params)
        student = params.student
        provenance = convert_student(student.model, params.layout.student, revision=student.revision,
                                     trust_remote_code=student.trust_remote_code, dtype=student.dtype,
                                     force=args.force)
        print(f"student {student.model} -> {params.layout.student} ({provenance.get('parameters', 0):,} parameters)")

    return stage.run("student", body)


if __name__ == "__main__":
    sys.exit(main())
