"""What the commands write: JSON that is always valid JSON."""

from __future__ import annotations

import json
from typing import Any

from simgpu.errors import SimGPUError


def dumps(obj: Any) -> str:
    """JSON as every command prints or writes it. A non-finite figure (a GPU file's costs
    large enough to overflow, say) is an error, never ``Infinity`` or ``NaN``, which no
    JSON reader accepts."""
    try:
        return json.dumps(obj, indent=1, allow_nan=False)
    except ValueError:
        raise SimGPUError(
            "a result is not a finite number (inf or nan): check the GPU file's figures "
            "and the inputs' sizes"
        ) from None
