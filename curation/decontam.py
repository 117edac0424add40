"""Benchmark decontamination by word n-gram overlap.

A trace is ``contaminated`` when its problem shares any ``ngram``-word sequence with a benchmark
problem, or when its response does (teachers often restate the problem before solving it).
Text is compared after lower-casing and keeping only runs of letters and digits, so LaTeX
spacing, ``$...$`` versus ``\\(...\\)`` and punctuation do not hide a copy: ``$\\frac{1}{2}$``
becomes the words ``frac 1 2``. A trace whose whole normalised problem text equals a benchmark
problem's is contaminated too; for benchmark problems shorter than ``ngram`` words, which have no
n-gram, that is the only test.

Formulas are the catch: ``a_1, a_2, \\ldots, a_n`` or ``z^8 - z^7 + z^6 …`` become runs of
single letters and digits that unrelated problems share. An n-gram enters the index only when at
least ``min_content_words`` of its words have two or more characters. Measured against the
~19k CHAMP responses and the five benchmark files in ``shared/benchmarks``: with every 13-gram,
26 false hits, all formula runs; at 5 content words, 3 (all the stock phrase "let a_1, a_2, …,
a_n be a sequence of positive/real numbers such that"), while a reformatted restatement of a
benchmark problem of 13 words or more is still found 2505 times in 2508.

The index is a polars table of 64-bit n-gram hashes (see ``curation.checks.ngram_hashes``) and
each trace n-gram is looked up by a hash join, so a 100k-trace source is checked in seconds.
Problems are checked once per distinct problem text, not once per trace.
"""
from __future__ import annotations

import polars as pl

from curation.checks import ngram_hashes, text_chunks, word_hashes

# Runs of letters or digits (any script): punctuation, LaTeX backslashes, braces and dollar
# signs separate words and are otherwise ignored.
WORD_PATTERN = r"[^\W_]+"
# Bounds the exploded word table (about 40 bytes per word) whatever the source size.
CHUNK_BYTES = 64 << 20


def normalised_text(expr: pl.Expr) -> pl.Expr:
    """The words of a text joined by single spaces (the form used for exact matching)."""
    return expr.str.to_lowercase().str.extract_all(WORD_PATTERN).list.join(" ")


class Decontaminator:
    """``contaminated`` per row; ``matches`` names the benchmark: the one matching the problem,
    else the one matching the response, the first in ``benchmarks``' order when several do.

    ngram 13: the length used by GPT-3's and open-r1's decontamination. Shorter n-grams start to
    match stock phrasing shared by unrelated problems ("the sum of all positive integers n such
    that"); a 13-word run shared with a benchmark problem is a copy of it.
    """

    name = "decontamination"
    reasons = ("contaminated",)

    def __init__(self, benchmarks: dict[str, list[str]], ngram: int = 13, min_content_words: int = 5):
        if ngram < 1 or not 0 <= min_content_words <= ngram:
            raise ValueError(f"ngram {ngram} must be >= 1 and min_content_words {min_content_words} "
                             f"in [0, ngram]")
        self.ngram = ngram
        # 5: drops the formula runs ("a 1 a 2 a 3 …", "sum 1 2 3 … 12") behind 23 of the 26 false
        # hits on CHAMP, at the cost of 3 of 2508 restated benchmark problems whose every 13-word
        # window is mostly formula (see the module docstring).
        self.min_content_words = min_content_words
        self.names = list(benchmarks)
        tables, exact = [], []
        for rank, (name, problems) in enumerate(benchmarks.items()):
            texts = pl.Series("text", [p for p in problems if p], dtype=pl.Utf8)
            grams = self._content_grams(texts)
            tables.append(grams.select(pl.col("gram"), pl.lit(rank, dtype=pl.UInt32).alias("rank")))
            exact.append(pl.DataFrame({"text": texts}).select(
                normalised_text(pl.col("text")).alias("text"), pl.lit(rank, dtype=pl.UInt32).alias("rank")))
        empty_grams = pl.DataFrame(schema={"gram": pl.UInt64, "rank": pl.UInt32})
        empty_exact = pl.DataFrame(schema={"text": pl.Utf8, "rank": pl.UInt32})
        self.index = (pl.concat(tables) if tables else empty_grams).group_by("gram").agg(pl.col("rank").min())
        self.exact = (pl.concat(exact) if exact else empty_exact).filter(pl.col("text") != "") \
            .group_by("text").agg(pl.col("rank").min())

    def _content_grams(self, texts: pl.Series) -> pl.DataFrame:
        """The n-grams of benchmark texts that carry enough words to identify a problem."""
        is_word = (pl.col("chars") >= 2).cast(pl.UInt32)
        content = is_word
        for k in range(1, self.ngram):
            content = content + is_word.shift(-k)
        parts = [ngram_hashes(word_hashes(chunk, WORD_PATTERN, with_length=True)
                              .with_columns(content.alias("content")), self.ngram, keep=("content",))
                 .filter(pl.col("content") >= self.min_content_words)
                 for _, chunk in text_chunks(texts, CHUNK_BYTES)]
        if not parts:
            return pl.DataFrame(schema={"gram": pl.UInt64})
        return pl.concat(parts).select("gram")

    def _grams(self, texts: pl.Series) -> pl.DataFrame:
        parts = [ngram_hashes(word_hashes(chunk, WORD_PATTERN), self.ngram)
                 .with_columns(pl.col("row").cast(pl.Int64) + start)
                 for start, chunk in text_chunks(texts, CHUNK_BYTES)]
        if not parts:
            return pl.DataFrame(schema={"row": pl.Int64, "gram": pl.UInt64})
        return pl.concat(parts)

    def _hits(self, texts: pl.Series) -> pl.Series:
        """Per text, the rank of the first benchmark sharing an n-gram with it (null: none)."""
        hits = (self._grams(texts).join(self.index, on="gram", how="inner")
                .group_by("row").agg(pl.col("rank").min()))
        rows = pl.DataFrame({"row": pl.int_range(0, texts.len(), dtype=pl.Int64, eager=True)})
        return rows.join(hits, on="row", how="left").sort("row")["rank"]

    def match_frame(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Per row: ``contaminated_by`` (benchmark name or null) and ``contaminated_in``
        ("problem" when the problem matches, else "response"), for the report."""
        problems = frame.select(pl.col("problem").unique(maintain_order=True)).to_series()
        by_problem = pl.DataFrame({"problem": problems, "gram_rank": self._hits(problems)}) \
            .with_columns(normalised_text(pl.col("problem")).alias("text")) \
            .join(self.exact.rename({"rank": "exact_rank"}), on="text", how="left") \
            .select("problem", pl.min_horizontal("gram_rank", "exact_rank").alias("problem_rank"))
        ranks = frame.select("problem").join(by_problem, on="problem", how="left", maintain_order="left") \
            .with_columns(self._hits(frame["response"]).alias("response_rank"))
        names = pl.Series(self.names, dtype=pl.Utf8)
        rank = pl.coalesce("problem_rank", "response_rank")
        return ranks.select(
            pl.when(rank.is_not_null()).then(rank.replace_strict(
                list(range(len(self.names))), names, default=None, return_dtype=pl.Utf8))
            .alias("contaminated_by"),
            pl.when(pl.col("problem_rank").is_not_null()).then(pl.lit("problem"))
            .when(pl.col("response_rank").is_not_null()).then(pl.lit("response"))
            .alias("contaminated_in"))

    def matches(self, frame: pl.DataFrame) -> list[str | None]:
        return self.match_frame(frame)["contaminated_by"].to_list()

    def __call__(self, frame: pl.DataFrame) -> pl.Series:
        found = self.match_frame(frame)
        return found.select(pl.when(pl.col("contaminated_by").is_not_null()).then(pl.lit("contaminated"))
                            .cast(pl.Utf8).alias(self.name)).to_series()
