"""Stage keys: a digest of everything a stage's output depends on.

A stage's key hashes its parent's key with its own settings, so a change anywhere upstream
changes every key after it. The settings are kept beside the key, so a refusal can name
the setting that differs and its two values.
"""
from __future__ import annotations

import hashlib
import json

#: settings recorded for the reader that do not change a stage's bytes (not hashed)
INFORMATIONAL = frozenset({"model", "raster_backend"})


def canonical(value):
    """``value`` as plain JSON types (tuples -> lists, keys sorted)."""
    return json.loads(json.dumps(value, sort_keys=True))


def stage_key(parent: str | None, settings: dict) -> str:
    """sha256 of the parent key and the settings that change the stage's output."""
    hashed = {k: v for k, v in settings.items() if k not in INFORMATIONAL}
    text = json.dumps({"parent": parent, "settings": hashed}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _flatten(value, prefix: str, out: dict) -> dict:
    if isinstance(value, dict) and value:
        for key in sorted(value):
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value
    return out


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:18] + "..." + text[-18:]


def differences(stage: str, old: dict, new: dict) -> list[str]:
    """``'stage.setting: old -> new'`` for each setting that differs."""
    old, new = _flatten(canonical(old), stage, {}), _flatten(canonical(new), stage, {})
    return [f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
