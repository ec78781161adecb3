"""The one check of the settings a Python caller passes to the inference API.

The console scripts validate every key against the typed schema (`waveglow.config`) before
anything runs. `Synthesizer(...)`, `from_mel`, `to_files`, `resynthesize` and `Scorer` are also
called from Python, where a wrong value would otherwise silently give garbage (a NaN sigma, an
odd crossfade, an `on_error` typo read as "skip"), so they check their arguments against the same
schema here, with the same messages.
"""

from __future__ import annotations

import math
from typing import Any

from waveglow.config import validate
from waveglow.errors import UserError


def check_settings(schema: type, **values: Any) -> None:
    """Check `values` against the ranges and choices of their keys in `schema`.

    Args:
        schema: the app dataclass that declares the keys (`SynthesizeApp`, `ScoreApp`).
        **values: key=value, keys named as in the schema (`format`, `chunk_overlap`).

    Raises:
        UserError: naming the first bad key, e.g. `sigma=nan: expected a finite number`; also an
            odd `crossfade_frames` or one above chunk_frames/2 (a rule across two keys).
    """
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{key}={value}: expected a finite number")
    validate(schema(**values))
    fade, chunk = values.get("crossfade_frames"), values.get("chunk_frames")
    if fade is not None and (fade % 2 or (chunk is not None and 2 * fade > chunk)):
        limit = f", at most chunk_frames/2 ({chunk // 2})" if chunk is not None else ""
        raise UserError(f"crossfade_frames={fade}: expected an even number of frames{limit}")
