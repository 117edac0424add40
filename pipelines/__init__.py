"""Thin DVC stage scripts, MLflow tracking helpers, lineage audit and the CLI."""
