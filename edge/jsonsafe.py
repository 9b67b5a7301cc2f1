"""Strict JSON for every file and message the project writes (manifests, evaluations, reports, frame logs, alarms)."""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

_JSON_SCALARS = (bool, int, float, str)


def json_safe(value: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """NaN/inf → None, numpy scalars/arrays → Python numbers/lists, tuples → lists, keys → str.

    ``default`` (e.g. ``str``) converts whatever is still not a JSON value (paths, bytes, sets, ...);
    without it such values are returned unchanged.
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v, default) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, default) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy scalar → number, array → (nested) list
        if isinstance(value, list):
            return json_safe(value, default)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if default is not None and value is not None and not isinstance(value, _JSON_SCALARS):
        return default(value)
    return value


def write_json(path: str | Path, value: Any, indent: int = 2) -> Path:
    """Write value as strict JSON (never NaN/Infinity), creating the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(value), indent=indent, allow_nan=False) + "\n")
    return path
