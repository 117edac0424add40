"""Generation: the engines and the one resumable sample store.

Owns every backend that turns chat prompts into completions (transformers, vLLM, OpenAI-compatible
HTTP, a fake for tests; any of them as replicas on Ray), what of an engine spec may be recorded, and :mod:`generation.store`, the
crash-safe sample store that teacher generation and evaluation both write through. Imports only
:mod:`common`.
"""
