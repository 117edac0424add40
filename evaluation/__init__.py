"""Generation engines, benchmarks, answer grading, the LLM judge and metrics."""
