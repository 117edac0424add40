"""The params root: one load per stage, presets as one overlay, cross-section rules, key paths."""
import copy

import pytest

from common.params import ParamsError, load_yaml
from pipelines.params import apply_preset, load_params, parse_params

BASE = load_yaml("params.yaml")


def _with(mutator):
    p = copy.deepcopy(BASE)
    mutator(p)
    return p


def test_default_params_parse():
    params = load_params("params.yaml")
    assert set(params.mix.mixes) == {"long", "short", "small", "mix_long", "mix_large", "human"}
    assert params.mix.mixes["mix_long"].components == {"long": 0.2, "short": 0.8}
    assert params.curate.over_cutoff == "reject"
    assert params.sources["champ_gpt4_turbo"].style == "long"
    assert params.preset == "default" and params.train.learning_rate == 5e-5
    assert params.layout.checkpoint("long").as_posix() == "models/checkpoints/long"


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p["mix"]["mixes"]["mix_long"]["components"].update(long=0.4),
     r"mix 'mix_long': shares sum to 1.2, expected 1.0"),
    (lambda p: p["mix"]["mixes"]["long"].update(components={"nope": 1.0}), r"mix 'long': unknown source or group 'nope'"),
    (lambda p: p["mix"]["mixes"]["long"].update(token_budget=1000), "exactly one of size"),
    (lambda p: p["curate"].update(cuttoff_len=3), r"curate: unknown key\(s\) \['cuttoff_len'\]"),
    (lambda p: p["curate"]["dedup"].update(perms=3), r"curate.dedup: unknown key\(s\) \['perms'\]"),
    (lambda p: p["sources"]["champ_gpt4"].update(style="medium"), r"sources.champ_gpt4.style: 'medium'"),
    (lambda p: p["sources"].update(x={"kind": "file", "style": "long", "teacher_size": "large", "path": "a.jsonl",
                                      "columns": {"problem": "q"}}), r"sources.x.columns: map 'response'"),
    (lambda p: p["groups"].update(long=["ghost"]), r"groups.long: unknown source 'ghost'"),
    (lambda p: p["train"].update(mixes=["long", "ghost"]), r"train.mixes: unknown mix 'ghost'"),
    (lambda p: p["curate"]["decontam"].update(benchmarks=["aime"]),
     r"curate.decontam.benchmarks: 'aime' is not a benchmark under eval.benchmarks"),
    (lambda p: p["report"].update(long="ghost"), r"report.long: 'ghost' is not a mix under mix.mixes"),
    (lambda p: p["eval"]["sampling"].update(temperature=-1), r"eval.sampling: "),
    (lambda p: p.update(preset="fast"), r"preset: 'fast' is not defined under presets"),
    (lambda p: p.update(preset="paper") or p["presets"]["paper"]["train"].update(mixes=["long"]),
     r"presets.paper.train: \['mixes'\] cannot be set by a preset"),
    (lambda p: p.update(preset="paper") or p["presets"]["paper"].update(paths={"eval": "x"}),
     r"presets.paper.paths: a preset may set only"),
    (lambda p: p.update(preset="paper") or p["presets"]["paper"]["train"].update(lr=1),
     r"train: unknown key\(s\) \['lr'\]"),
    (lambda p: p.pop("paths"), r"params: section 'paths' is missing"),
])
def test_errors_name_the_key_path(mutate, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(_with(mutate))


def test_paper_preset_overlays_student_train_and_the_curation_cutoff():
    raw = _with(lambda p: p.update(preset="paper"))
    params = parse_params(raw)
    assert (params.student.model, params.student.dtype) == ("Qwen/Qwen2.5-3B-Instruct", "bfloat16")
    assert (params.train.learning_rate, params.train.epochs, params.train.cutoff_len) == (1e-5, 2, 8192)
    assert params.train.mixes == BASE["train"]["mixes"]            # what to train stays
    assert params.train.lora.r == BASE["train"]["lora"]["r"]       # merged key by key
    default = parse_params(BASE).curate
    assert (params.curate.cutoff_len, params.curate.max_tokens, params.curate.over_cutoff) == (8192, 16384, "flag")
    assert params.curate.correctness == default.correctness and params.curate.dedup == default.dedup
    assert apply_preset(BASE) is BASE                              # default: the sections as written


def test_load_params_errors(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")
