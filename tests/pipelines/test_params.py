import copy

import pytest
import yaml

from pipelines.params import ParamsError, load_params, parse_curate, parse_mix, parse_sources

BASE = load_params("params.yaml")


def _with(mutator):
    p = copy.deepcopy(BASE)
    mutator(p)
    return p


def test_default_params_parse():
    mix = parse_mix(BASE)
    assert set(mix.mixes) == {"long", "short", "small", "mix_long", "mix_large", "human"}
    assert mix.mixes["mix_long"].components == {"long": 0.2, "short": 0.8}
    assert parse_curate(BASE).over_cutoff == "reject"
    assert parse_sources(BASE)["champ_gpt4_turbo"].style == "long"


def test_shares_must_sum_to_one():
    p = _with(lambda p: p["mix"]["mixes"]["mix_long"]["components"].update(long=0.4))
    with pytest.raises(ParamsError, match=r"mix 'mix_long': shares sum to 1.2, expected 1.0"):
        parse_mix(p)


def test_unknown_component_is_named():
    p = _with(lambda p: p["mix"]["mixes"]["long"].update(components={"nope": 1.0}))
    with pytest.raises(ParamsError, match=r"mix 'long': unknown source or group 'nope'"):
        parse_mix(p)


def test_size_xor_token_budget():
    p = _with(lambda p: p["mix"]["mixes"]["long"].update(token_budget=1000))
    with pytest.raises(ParamsError, match="exactly one of size"):
        parse_mix(p)


def test_unknown_key_is_refused():
    p = _with(lambda p: p["curate"].update(cuttoff_len=3))
    with pytest.raises(ParamsError, match=r"curate: unknown key\(s\) \['cuttoff_len'\]"):
        parse_curate(p)


def test_bad_source_fields():
    p = _with(lambda p: p["sources"]["champ_gpt4"].update(style="medium"))
    with pytest.raises(ParamsError, match=r"sources.champ_gpt4.style: 'medium'"):
        parse_sources(p)
    p = _with(lambda p: p["sources"].update(x={"kind": "file", "style": "long", "teacher_size": "large",
                                               "path": "a.jsonl", "columns": {"problem": "q"}}))
    with pytest.raises(ParamsError, match=r"sources.x.columns: map 'response'"):
        parse_sources(p)


def test_group_with_unknown_member():
    p = _with(lambda p: p["groups"].update(long=["ghost"]))
    with pytest.raises(ParamsError, match=r"groups.long: unknown source 'ghost'"):
        parse_mix(p)


def test_load_params_errors(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")
