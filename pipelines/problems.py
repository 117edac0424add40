"""Stage `problems`: the problem set split into train / held-out test, plus every configured eval
benchmark as a normalised frame (decontamination and evaluation both read these)."""
from __future__ import annotations

import sys

from common import layout as names
from common.io import atomic_dir, write_json
from curation.problem_sets import load_problem_set, split_problems
from evaluation.benchmarks import load_benchmark
from pipelines import stage
from pipelines.params import load_params


def main(argv=None) -> int:
    args = stage.parser(__doc__).parse_args(argv)

    def body():
        params = load_params(args.params)
        cfg = params.problems
        problems = load_problem_set(cfg.set)
        train, test = split_problems(problems, cfg.test_fraction, cfg.seed)
        with atomic_dir(params.layout.problems) as out:
            train.write_parquet(out / names.TRAIN_PROBLEMS)
            test.write_parquet(out / names.TEST_PROBLEMS)
            (out / names.BENCHMARKS).mkdir()
            sizes = {}
            for name, spec in params.eval.benchmarks.items():
                frame = load_benchmark(name, spec, test)
                frame.write_parquet(out / names.BENCHMARKS / f"{name}.parquet")
                sizes[name] = frame.height
            write_json(out / names.SPLIT, {"n_problems": problems.height, "train": train.height,
                                           "test": test.height, "seed": cfg.seed,
                                           "test_fraction": cfg.test_fraction, "benchmarks": sizes})
        print(f"problems: {train.height} train / {test.height} held-out; benchmarks {sizes}")

    return stage.run("problems", body)


if __name__ == "__main__":
    sys.exit(main())
