"""Stage keys: a digest of everything a stage's output depends on, up to floating-point rounding.

Settings that change only rounding (the encoder's batch shapes in fp32/fp16, the raster backend,
thread counts, the machine) are not hashed, so that changing them reuses what is stored.

A stage's key hashes its parent's key (the stage before it) with its own settings, so a change
upstream changes every key after it. The encode stage has no parent
(:data:`~fastimg.store.schema.OWN_INPUT_STAGES`): its settings name the texts it encodes, so a
corpus that differs only in labels, ids or split keeps its embeddings. The settings are kept
beside the key, so a refusal can name the setting that differs and its two values.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from fastimg.store.schema import OWN_INPUT_STAGES, STAGE_SETTINGS, STAGES

#: settings recorded for the reader that do not change a stage's bytes (not hashed)
INFORMATIONAL = frozenset({"model", "raster_backend"})
#: the encode stage's ``compute_dtype`` (stores written before ``precision`` replaced it) and
#: the precision that runs the same compute (fp32, or fp32 weights under that autocast dtype)
COMPUTE_DTYPE_PRECISIONS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def canonical(value):
    """``value`` as plain JSON types (tuples -> lists, keys sorted)."""
    return json.loads(json.dumps(value, sort_keys=True))


def stage_key(parent: str | None, settings: dict) -> str:
    """sha256 of the parent key and the settings that change the stage's output.

    Parameters
    ----------
    parent : str or None
        The key of the stage this one is computed from; None for the first stage and for a
        stage that names its own input (:data:`~fastimg.store.schema.OWN_INPUT_STAGES`).
    settings : dict
        The stage's settings (JSON types; key order does not matter). Top-level
        :data:`INFORMATIONAL` ones are recorded but not hashed.

    Returns
    -------
    str
        64 hex digits.
    """
    hashed = {k: v for k, v in settings.items() if k not in INFORMATIONAL}
    text = json.dumps({"parent": parent, "settings": hashed}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _encode_settings_today(encode: dict) -> dict:
    """The encode stage's settings, those of a store written before ``precision`` replaced
    ``compute_dtype`` in today's terms: the same run (device kind, compute dtype) named by
    ``device`` and ``precision``."""
    settings = encode.get("settings") or {}
    precision = COMPUTE_DTYPE_PRECISIONS.get(settings.get("compute_dtype"))
    if precision is None or "precision" in settings or encode.get("device") not in ("cpu", "cuda"):
        return settings
    return {**{k: v for k, v in settings.items() if k != "compute_dtype"},
            "device": encode["device"], "precision": precision}


def upgraded(stages: dict) -> dict:
    """Stage records of a store written by an older fastimg, in today's terms, so that a build
    reuses its embeddings (the same numbers) instead of encoding again.

    Two changes are followed: the encode stage's ``compute_dtype`` became ``device`` and
    ``precision``, and its key stopped hashing the corpus stage's (it was chained to it, so
    a new label column re-encoded the same texts). The keys from ``encode`` on are made
    again from the settings. Records in today's terms, records without the texts' digest, and
    records whose keys do not follow from their settings are returned as they are.
    """
    encode = stages.get("encode") or {}
    settings = _encode_settings_today(encode)
    if "texts_sha256" not in settings or encode.get("key") == stage_key(None, settings):
        return stages
    new = dict(stages)
    old_parent, new_parent = (stages.get("corpus") or {}).get("key"), None
    for stage in STAGES[STAGES.index("encode"):]:
        record = stages.get(stage)
        if record is None:
            break
        if record.get("key") != stage_key(old_parent, record.get("settings") or {}):
            return stages
        own = settings if stage == "encode" else record["settings"]
        old_parent, new_parent = record["key"], stage_key(new_parent, own)
        new[stage] = {**record, "settings": own, "key": new_parent}
    return new


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
    """``'stage.setting: old -> new'`` for each setting that differs, top-level settings first
    (a refusal shows the first few: ``encoder.precision`` before the ``encoder.int8.*`` details
    it brings).

    Parameters
    ----------
    stage : str
        The name the settings go by in messages (``"encoder"`` for the encode stage:
        :data:`~fastimg.store.schema.STAGE_SETTINGS`), the first part of each setting's name.
    old, new : dict
        The recorded settings and today's; nested dicts are compared setting by setting,
        their names joined by dots.

    Returns
    -------
    list of str
        One line per setting that differs (empty when none does); each value as JSON (null
        where a side lacks the setting), shortened to at most 40 characters.
    """
    old, new = _flatten(canonical(old), stage, {}), _flatten(canonical(new), stage, {})
    return [f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}"
            for k in sorted(set(old) | set(new), key=lambda k: (k.count("."), k))
            if old.get(k) != new.get(k)]


def digest(*parts) -> str:
    """sha256 over arrays and strings, each length-prefixed."""
    digest = hashlib.sha256()
    for part in parts:
        data = (part.encode("utf-8", "surrogatepass") if isinstance(part, str)
                else np.ascontiguousarray(part).tobytes())
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


class StagePlan:
    """The key and settings of each stage of one build, chained: each key hashes the one
    before it with the stage's own settings."""

    def __init__(self):
        self.settings, self.keys = {}, {}

    def add(self, stage: str, settings: dict, key: str | None = None) -> "StagePlan":
        """Add ``stage`` after the last one (its parent, unless the stage names its own
        input), keyed ``key`` or by its settings."""
        parent = (self.keys[list(self.keys)[-1]]
                  if self.keys and stage not in OWN_INPUT_STAGES else None)
        settings = canonical(settings)
        self.settings[stage] = settings
        self.keys[stage] = key or stage_key(parent, settings)
        return self

    def differences(self, stages: dict, *, first: str | None = None) -> list[str]:
        """What differs from the stage records ``stages``: the settings of every stage whose
        key differs (those of stage ``first`` before the others) up to the first stage they
        lack, or else the first stage they lack or that was computed from different input."""
        found, unexplained = [], None
        for stage in sorted(self.keys, key=lambda stage: stage != first):
            old = stages.get(stage)
            if old is None:
                return found or [f"{stage}: not in the store"]
            if old["key"] != self.keys[stage]:
                own = differences(STAGE_SETTINGS.get(stage, stage), old.get("settings", {}),
                                  self.settings[stage])
                found += own
                unexplained = unexplained or (
                    None if own else f"{stage}: computed from different input")
        return found or ([unexplained] if unexplained else [])
