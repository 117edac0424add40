"""The shared bottom layer: what every other package may import, and which imports none of them.

Owns file I/O (atomic outputs, the one JSONL reader), content digests, the artefact layout (every
output folder and file name), the prompt and chat formatting that training, curation and
evaluation must agree on, the strict params builder with its one ``ParamsError``, and the error
base class that stages map to exit codes.
"""
