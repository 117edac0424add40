"""Errors of the curation package (one module, so that sources and teacher share them without an
import cycle)."""
from __future__ import annotations

from common.errors import MixdistillError


class SourceError(MixdistillError, ValueError):
    """A trace source or problem set cannot be read as configured; the message names the file,
    row and field."""
