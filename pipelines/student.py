"""Stage ``student``: convert the configured student once into ``paths.student``.

Reads ``student:`` (and, when ``train.preset`` is ``paper``, the overrides in ``paper.student``),
writes a plain transformers checkpoint (safetensors, tokenizer with chat template, config) plus
``mixdistill_student.json`` (source spec, GGUF sha256 or revision). Every later stage loads that
directory like any hub model.

    python -m pipelines.student [--force]
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, fields

from pipelines.params import ParamsError, StudentParams, load_params, parse_paths, parse_student
from training.student import StudentError, convert_student

log = logging.getLogger("pipelines.student")


def student_params(params: dict) -> StudentParams:
    """The student to use: ``student:``, with ``paper.student`` over it under the paper preset
    (so ``dvc exp run -S train.preset=paper`` switches student and recipe together)."""
    student = parse_student(params)
    if (params.get("train") or {}).get("preset") != "paper":
        return student
    overrides = (params.get("paper") or {}).get("student") or {}
    if not isinstance(overrides, dict):
        raise ParamsError("paper.student: expected a mapping of student: keys (model, revision, dtype, ...)")
    known = {f.name for f in fields(StudentParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ParamsError(f"paper.student: unknown key(s) {unknown}; expected some of {sorted(known)}")
    return StudentParams(**{**asdict(student), **overrides})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--force", action="store_true", help="convert even if the output is up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        params = load_params(args.params)
        paths = parse_paths(params)
        student = student_params(params)
        provenance = convert_student(student.model, paths.student, revision=student.revision,
                                     trust_remote_code=student.trust_remote_code, dtype=student.dtype,
                                     force=args.force)
    except (ParamsError, StudentError) as exc:
        raise SystemExit(f"student: {exc}") from exc
    log.info("student %s -> %s (%s parameters)", student.model, paths.student,
             f"{provenance.get('parameters', 0):,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
