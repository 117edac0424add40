"""configs/paper.params.yaml: the paper's data as published, generated from params.yaml and in step with it."""
import yaml

from configs.make_paper_params import OUT, REPLACED, render
from pipelines.params import parse_params
from tests.project import REPO


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def test_the_paper_params_are_generated_from_the_current_params_yaml():
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    assert OUT.read_text() == render(base), "run: python configs/make_paper_params.py"
    paper = yaml.safe_load(OUT.read_text())
    changed = {k for k in set(base) | set(paper) if base.get(k) != paper.get(k)}
    assert changed <= {k.split(".")[0] for k in REPLACED}
    for section in changed - {k for k in REPLACED if "." not in k}:     # partly replaced sections
        keys = {k.split(".", 1)[1].split(".")[0] for k in REPLACED if k.startswith(section + ".")}
        for key in set(base[section]) | set(paper[section]):
            if key not in keys:
                assert base[section].get(key) == paper[section].get(key), f"{section}.{key} drifted"
    # the paper preset itself changes only in its arms (the published mixes train as the Mix arm)
    assert {k: v for k, v in paper["presets"]["paper"]["train"].items() if k != "arms"} == \
        {k: v for k, v in base["presets"]["paper"]["train"].items() if k != "arms"}


def test_the_paper_params_parse_and_say_what_the_paper_did():
    params = parse_params(yaml.safe_load(OUT.read_text()))
    assert params.preset == "paper" and params.problems.test_fraction == 0
    assert params.problems.set["format"] == "math" and len(params.problems.set["configs"]) == 7
    assert {s.id for s in params.sources.values()} >= {"UWNSL/MATH_training_split_long_cot",
                                                        "UWNSL/MATH_training_split_short_cot",
                                                        "UWNSL/Mix-Long_long_0.2_short_0.8"}
    assert all(s.columns == {"problem": "problem", "response": "solution"} for s in params.sources.values())
    mix_long = params.mix.mixes["mix_long"]
    assert (mix_long.size, mix_long.one_per_problem, mix_long.components) == (
        5383, True, {"uwnsl_long": 0.2, "uwnsl_short": 0.8})
    # no held-out split: decontamination covers every eval benchmark
    assert params.curate.decontam.benchmarks == sorted(params.eval.benchmarks)
    assert _get(params.raw, "presets.paper.train.arms.published_mix_long.cutoff_len") == 4096
