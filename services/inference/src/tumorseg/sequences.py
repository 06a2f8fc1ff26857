"""The four MR sequences of a BraTS study, named once for the whole package.

``SEQUENCES`` is the canonical order (the BraTS file suffixes and the result JSON's ``series`` keys);
``SequenceName`` is the same set as a type, for pydantic models, FastAPI queries and Typer options.
A model package's own channel order is in its manifest (``Preprocessing.channels``), not here.
"""

from __future__ import annotations

from typing import Literal, get_args

SequenceName = Literal["flair", "t1", "t1ce", "t2"]
SEQUENCES: tuple[str, ...] = get_args(SequenceName)
