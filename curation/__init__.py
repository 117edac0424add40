"""Trace curation: schema, sources, checks, contracts, dedup, decontamination, mixing."""
