"""Student NLL per trace: batched = unbatched reference, trainer's mask, order, truncation, resume."""
from __future__ import annotations

import math

import pytest
import torch

from tests.training.helpers import make_rows, tiny_model
from training.data import IGNORE_INDEX, PaddedCollator, encode_examples
from training.scoring import TraceScore, nll_from_logits, score_examples, score_examples_unbatched


@pytest.fixture()
def model(tokenizer):
    return tiny_model(tokenizer, seed=3)


def mixed_rows(n: int = 11) -> tuple[list[str], list[str]]:
    rows = make_rows(n)
    # Lengths from a few tokens to a few hundred, so batches mix short and long rows.
    responses = [r["response"] * (1 + (i * 5) % 7) for i, r in enumerate(rows)]
    if n > 3:
        responses[3] = "5"
    return [r["problem"] for r in rows], responses


def test_batched_scores_equal_the_unbatched_reference(model, tokenizer):
    problems, responses = mixed_rows()
    lengths = [len(e["input_ids"]) for e in encode_examples(tokenizer, problems, responses)]
    assert max(lengths) > 3 * min(lengths)
    reference = score_examples_unbatched(model, tokenizer, problems, responses)
    for batch_size in (1, 4, 16):
        batched = score_examples(model, tokenizer, problems, responses, batch_size=batch_size, progress=False)
        assert [s.n_tokens for s in batched] == [s.n_tokens for s in reference]
        for got, want in zip(batched, reference):
            assert got.mean_nll == pytest.approx(want.mean_nll, abs=1e-4)
            assert got.total_nll == pytest.approx(want.total_nll, abs=1e-4 * want.n_tokens)
            assert not got.truncated
    # A random-init model over a 49k vocabulary is near-uniform: ~ln(V) nats per token.
    assert all(abs(s.mean_nll - math.log(len(tokenizer))) < 1.0 for s in reference)


def test_scores_count_exactly_the_assistant_tokens(model, tokenizer):
    problems, responses = mixed_rows(5)
    encoded = encode_examples(tokenizer, problems, responses)
    scores = score_examples(model, tokenizer, problems, responses, progress=False)
    for e, s in zip(encoded, scores):
        labelled = sum(label != IGNORE_INDEX for label in e["labels"])
        assert s.n_tokens == labelled == len(e["input_ids"]) - e["prompt_len"]
    # Same as the trainer's loss on one padded example (mean over its labelled tokens).
    one = PaddedCollator(tokenizer)([{"input_ids": encoded[0]["input_ids"], "labels": encoded[0]["labels"]}])
    with torch.no_grad():
        assert model(**one).loss.item() == pytest.approx(scores[0].mean_nll, abs=1e-5)


def test_prompt_tokens_do_not_count(model, tokenizer):
    """Logits at prompt positions are not scored: a different problem with the same response
    changes the scores only through context, and doctored prompt-position logits change nothing."""
    problems, responses = mixed_rows(3)
    e = encode_examples(tokenizer, problems[:1], responses[:1])[0]
    labels = torch.tensor(e["labels"])
    logits = torch.randn(len(labels), len(tokenizer))
    total, n = nll_from_logits(logits, labels)
    doctored = logits.clone()
    doctored[: e["prompt_len"] - 1] = 1e4 * torch.randn(e["prompt_len"] - 1, len(tokenizer))
    assert nll_from_logits(doctored, labels) == (total, n)
    assert n == len(labels) - e["prompt_len"]
    # The last prompt position predicts the first response token, so it does count.
    doctored[e["prompt_len"] - 1] += 50 * torch.randn(len(tokenizer))
    assert nll_from_logits(doctored, labels)[0] != pytest.approx(total)


def test_order_is_the_input_order(model, tokenizer):
    problems, responses = mixed_rows(9)
    scores = score_examples(model, tokenizer, problems, responses, batch_size=4, progress=False)
    order = [5, 0, 8, 2, 7, 1, 4, 6, 3]
    shuffled = score_examples(model, tokenizer, [problems[i] for i in order], [responses[i] for i in order],
                              batch_size=4, progress=False)
    assert [s.n_tokens for s in shuffled] == [scores[i].n_tokens for i in order]
    assert [s.mean_nll for s in shuffled] == pytest.approx([scores[i].mean_nll for i in order], abs=1e-5)
    assert len({s.n_tokens for s in scores}) > 3    # the rows really differ, so order is observable


def test_long_sequences_are_scored_on_their_head_and_flagged(model, tokenizer):
    problems, responses = mixed_rows(6)
    encoded = encode_examples(tokenizer, problems, responses)
    lengths = [len(e["input_ids"]) for e in encoded]
    max_len = sorted(lengths)[3]
    scores = score_examples(model, tokenizer, problems, responses, max_len=max_len, progress=False)
    reference = score_examples_unbatched(model, tokenizer, problems, responses, max_len=max_len)
    for e, n, s, r in zip(encoded, lengths, scores, reference):
        assert s.truncated == (n > max_len) == r.truncated
        assert s.n_tokens == min(n, max_len) - e["prompt_len"]
        assert s.mean_nll == pytest.approx(r.mean_nll, abs=1e-4)
    assert sum(s.truncated for s in scores) == 2
    prompt_only = score_examples(model, tokenizer, problems[:1], responses[:1], max_len=encoded[0]["prompt_len"],
                                 progress=False)[0]
    assert prompt_only.n_tokens == 0 and prompt_only.truncated and math.isnan(prompt_only.mean_nll)


def test_resume_scores_only_what_is_missing(model, tokenizer, tmp_path, monkeypatch):
    problems, responses = mixed_rows(6)
    path = tmp_path / "work" / "scores.jsonl"
    first = score_examples(model, tokenizer, problems[:4], responses[:4], batch_size=2, progress=False,
                           checkpoint=path, fingerprint="m1")
    with open(path, "a") as f:
        f.write('{"key": "torn')                       # a write cut short by a kill
    calls = []
    decoder = model.model                              # a Llama's head sees scored rows only
    forward = decoder.forward
    monkeypatch.setattr(decoder, "forward", lambda *a, **k: calls.append(k["input_ids"].shape[0]) or forward(*a, **k))
    again = score_examples(model, tokenizer, problems, responses, batch_size=2, progress=False,
                           checkpoint=path, fingerprint="m1")
    assert sum(calls) == 2                             # only the two new rows went through the model
    assert again[:4] == first
    fresh = score_examples(model, tokenizer, problems, responses, batch_size=8, progress=False)
    assert [s.mean_nll for s in again] == pytest.approx([s.mean_nll for s in fresh], abs=1e-5)
    calls.clear()
    score_examples(model, tokenizer, problems, responses, batch_size=8, progress=False, checkpoint=path,
                   fingerprint="another model")
    assert sum(calls) == 6                             # another model's scores are not reused


def test_batches_are_full_unless_a_row_would_be_mostly_padding():
    from training.scoring import _batches

    lengths = [1000, 990, 980, 970, 960, 700, 690, 300]
    assert _batches(list(range(8)), lengths, 4) == [[0, 1, 2, 3], [4], [5, 6], [7]]
    assert _batches(list(range(8)), [500] * 8, 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert _batches(list(range(5)), [5000, 4000, 4000, 4000, 3900], 16, max_tokens=12000) == [[0, 1], [2, 3, 4]]

def test_empty_input_and_bad_arguments(model, tokenizer):
    assert score_examples(model, tokenizer, [], [], progress=False) == []
    with pytest.raises(ValueError, match="2 problems but 1 responses"):
        score_examples(model, tokenizer, ["a", "b"], ["c"], progress=False)
    assert isinstance(score_examples(model, tokenizer, ["a"], ["b"], progress=False)[0], TraceScore)


def test_scored_subset_is_seeded_and_independent_of_row_order(model, tokenizer):
    import polars as pl

    from training.scoring import score_frame, subset_for_scoring

    ids = [f"t{i:02d}" for i in range(30)]
    chosen = {ids[i] for i in subset_for_scoring(ids, 8, seed=0, salt="src")}
    assert len(chosen) == 8
    assert {ids[::-1][i] for i in subset_for_scoring(ids[::-1], 8, seed=0, salt="src")} == chosen
    assert {ids[i] for i in subset_for_scoring(ids, 8, seed=0, salt="other")} != chosen
    assert subset_for_scoring(ids, None, seed=0) == list(range(30)) == subset_for_scoring(ids, 30, seed=0)
    problems, responses = mixed_rows(6)
    frame = pl.DataFrame({"trace_id": [f"t{i}" for i in range(6)], "problem": problems, "response": responses})
    out, summary = score_frame(frame, model, tokenizer, max_rows=4, seed=0, salt="src", batch_size=3, progress=False)
    assert out["student_nll"].null_count() == 2 and out["student_nll_tokens"].null_count() == 2
    assert (summary["n_scored"], summary["n_rows"], summary["n_truncated"]) == (4, 6, 0)
    assert summary["p10"] <= summary["median"] <= summary["p90"]


def _traces(source: str, n: int):
    import polars as pl

    from curation.schema import TRACE_SCHEMA, trace_id

    rows = []
    for i in range(n):
        a, b = 11 + 3 * i, 5 + 7 * i
        problem = f"A farmer has {a} sheep and buys {b} more. How many sheep does the farmer have now?"
        words = " ".join(["First we note the farmer starts with", str(a), "sheep."] + ["Then"] * (i % 3 > 0)
                         + [f"buying {b} more adds them to the flock, so we compute {a} + {b} = {a + b}."])
        response = f"{words} Therefore the farmer has {a + b} sheep in total. The answer is \\boxed{{{a + b}}}."
        rows.append({"trace_id": trace_id(problem, response, "GPT-4"), "source": source, "problem_id": f"p{i}",
                     "problem": problem, "reference_answer": str(a + b), "prompt": problem, "response": response,
                     "teacher": "GPT-4", "style": "short", "teacher_size": "large", "finish_reason": "stop",
                     "truncated": False, "generation": "{}", "origin": "{}"})
    return pl.DataFrame(rows, schema=TRACE_SCHEMA)


def test_curate_score_option_writes_the_columns_and_the_report_summary(tokenizer, tmp_path, monkeypatch):
    """The curate stage with curate.score: a seeded subset of kept rows gets student_nll equal to
    score_examples with the student at models/student; the others hold null; the contract passes."""
    import json

    import polars as pl
    import yaml

    from pipelines import curate
    from tests.project import project_params
    from training.student import convert_student, load_student

    source_dir = tmp_path / "tiny_source"
    tiny_model(tokenizer, seed=5).save_pretrained(source_dir)
    tokenizer.save_pretrained(source_dir)
    convert_student(str(source_dir), tmp_path / "models" / "student")
    params = project_params(paths={"problems": "data/problems", "traces": "data/traces", "curated": "data/curated",
                                   "mixes": "data/mixes", "student": "models/student",
                                   "checkpoints": "models/checkpoints", "eval": "data/eval", "reports": "reports"})
    params["curate"]["correctness"]["enabled"] = False        # no math-verify workers for this test
    params["curate"]["decontam"]["benchmarks"] = []
    params["curate"]["score"] = {"enabled": True, "max_rows": 4, "batch_size": 3, "seed": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "data" / "traces").mkdir(parents=True)
    _traces("champ_gpt4", 7).write_parquet(tmp_path / "data" / "traces" / "champ_gpt4.parquet")
    monkeypatch.chdir(tmp_path)

    assert curate.main(["--source", "champ_gpt4", "--no-mlflow"]) == 0
    out = tmp_path / "data" / "curated" / "champ_gpt4"
    kept = pl.read_parquet(out / "kept.parquet")
    report = json.loads((out / "report.json").read_text())
    assert kept.height == 7 and report["contract"]["success"], report["contract"]
    assert kept.schema["student_nll"] == pl.Float64 and kept.schema["student_nll_tokens"] == pl.Int64
    scored = kept.filter(pl.col("student_nll").is_not_null())
    assert scored.height == 4 and kept["student_nll_tokens"].null_count() == 3
    model, _ = load_student(str(tmp_path / "models" / "student"))
    want = score_examples(model, tokenizer, scored["problem"].to_list(), scored["response"].to_list(), progress=False)
    assert scored["student_nll"].to_list() == pytest.approx([s.mean_nll for s in want], abs=1e-5)
    assert scored["student_nll_tokens"].to_list() == [s.n_tokens for s in want]
    summary = report["student_nll"]
    values = sorted(s.mean_nll for s in want)
    assert (summary["n_scored"], summary["n_rows"], summary["max_rows"]) == (4, 7, 4)
    assert summary["mean"] == pytest.approx(sum(values) / 4) and summary["median"] == pytest.approx(
        (values[1] + values[2]) / 2)
    assert values[0] <= summary["p10"] <= summary["p90"] <= values[-1]
    assert "student_nll" in report["timings_s"]
    # The resume file sits outside the curated output; a rerun takes its scores from it.
    work = tmp_path / "data" / "score_work" / "curate_champ_gpt4.jsonl"
    assert len(work.read_text().splitlines()) == 1 + 4
    assert curate.main(["--source", "champ_gpt4", "--no-mlflow"]) == 0
    again = pl.read_parquet(out / "kept.parquet")
    assert again["student_nll"].to_list() == kept["student_nll"].to_list()
    assert len(work.read_text().splitlines()) == 1 + 4


def test_progress_is_a_bar_only_when_asked_or_on_a_terminal(model, tokenizer, capsys, monkeypatch):
    monkeypatch.delenv("MIXDISTILL_PROGRESS", raising=False)
    problems, responses = mixed_rows(3)
    score_examples(model, tokenizer, problems, responses, progress=False)
    assert capsys.readouterr().err == ""
    score_examples(model, tokenizer, problems, responses)          # auto, stderr is no terminal here
    err = capsys.readouterr().err
    assert err.startswith("scoring: 3/3 seqs in ") and err.count("\n") == 1 and "tokens/s" in err
    score_examples(model, tokenizer, problems, responses, progress=True)
    assert "\r" in capsys.readouterr().err                        # tqdm redraws in place


def test_vocabulary_projection_runs_on_scored_positions_only(model, tokenizer, monkeypatch):
    """A plain-head model (a Llama) projects only the positions that predict a response token,
    with the scores of its own full forward; a model outside PLAIN_HEAD_CLASSES keeps its forward."""
    from transformers import LlamaForCausalLM

    from training import scoring

    problems, responses = mixed_rows(6)
    rows_projected = []
    hook = model.lm_head.register_forward_hook(
        lambda module, args, out: rows_projected.append(args[0].shape[:-1].numel()))
    fast = score_examples(model, tokenizer, problems, responses, batch_size=4, progress=False)
    hook.remove()
    assert sum(rows_projected) == sum(s.n_tokens for s in fast)

    monkeypatch.setattr(scoring, "PLAIN_HEAD_CLASSES", frozenset())
    full = score_examples(model, tokenizer, problems, responses, batch_size=4, progress=False)
    monkeypatch.undo()
    for a, b in zip(fast, full):
        assert a.n_tokens == b.n_tokens and a.mean_nll == pytest.approx(b.mean_nll, abs=1e-5)

    class ScaledLogits(LlamaForCausalLM):      # a head with scaling in between, as Cohere's has
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 8.0
            return out

    scaled = ScaledLogits(model.config)
    scaled.load_state_dict(model.state_dict())
    assert scoring._plain_head(scaled) is None
    rescaled = score_examples(scaled, tokenizer, problems, responses, batch_size=4, progress=False)
    with torch.no_grad():                      # its own logits, one unpadded sequence at a time
        for got, e, plain in zip(rescaled, encode_examples(tokenizer, problems, responses), fast):
            logits = scaled(input_ids=torch.tensor([e["input_ids"]])).logits[0]
            total, n = nll_from_logits(logits, torch.tensor(e["labels"]))
            assert got.n_tokens == n and got.total_nll == pytest.approx(total, abs=1e-4 * n)
            assert abs(got.mean_nll - plain.mean_nll) > 1e-3
