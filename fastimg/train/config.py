"""The frozen settings of one training run (serialised to JSON beside the run's metrics)."""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from fastimg._validation import (check_description, check_flag, check_fraction, check_seed,
                                 is_whole, total_memory_bytes)

logger = logging.getLogger("fastimg.train")

NORMALISATIONS = ("image", "dataset", "none")
CACHES = ("auto", "memory", "zarr", "none")
LOADER_NAMES = ("auto", "dali", "torch")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("none", "cosine", "plateau")
CUTS = ("paper", "nopool")
#: the most loader worker processes a run may ask for (each is a process with its own copy of
#: the loader; more than this is a typo, not a setting)
MAX_WORKERS = 256

#: torch devices training and prediction run on: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def check_device(name: str, value) -> str:
    """``value`` when it names a device :func:`resolve_device` takes, else
    a ValueError naming ``name`` (torch's own error lists two dozen device types and not the
    setting)."""
    if not (isinstance(value, str) and DEVICE_PATTERN.fullmatch(value)):
        raise ValueError(f"{name} must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def resolve_device(name: str = "auto"):
    """``"auto"`` -> CUDA when available, else CPU (logged); a ``torch.device`` is taken
    as its name.

    Returns
    -------
    torch.device
    """
    import torch

    name = check_device("device", str(name) if isinstance(name, torch.device) else name)
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        logger.info("train device 'auto' resolved to %s", device)
        return device
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.index is not None and device.index >= count:  # else CUDA's invalid ordinal
        raise ValueError(f"device {name!r} requested but this machine has {count} CUDA "
                         f"device{'s' if count != 1 else ''} (cuda:0"
                         f"{f' to cuda:{count - 1}' if count > 1 else ''})")
    return device


#: Settings each preset gives the fields left at ``None`` (the learning rates come from
#: :data:`fastimg.train.extractors.DEFAULT_LR` / ``PAPER_LR``, per extractor).
#: ``"paper"``: Benarab (2021) as published: Table I's learning rates, Adam without weight
#: decay or schedule, per-image z-normalisation, 15 epochs, the paper's cuts, 50 x 50 inputs.
#: ``"ours"``: what measured best on validation on the full IMDB store (benchmarks/RESULTS.md,
#: Accuracy; 20,000 train / 5,000 val / 25,000 test reviews, MiniLM, alexnet with random
#: weights, the default one-feature-per-pixel layout): the paper's cut kept frozen (its features
#: cached) with a dense branch of the pixels beside the conv head (``pixel_branch``), per-pixel
#: standardisation, AdamW with weight decay 0.1 + cosine over 15 epochs, early stopping after 8
#: epochs without a validation gain: validation 0.851 / 0.852 / 0.848 over three seeds (test
#: 0.853 / 0.851 / 0.846), against 0.848 / 0.847 / 0.845 with weight decay 1e-2 (0.3: 0.847;
#: dropout 0.5: 0.849). On DeepInsight's binned layout the pixel branch lifted validation from
#: 0.783 to 0.843 (test 0.781 -> 0.835); the previous default (the ``"nopool"`` cut, trained, no
#: pixel branch: the best on a 4,000-review slice) got 0.830 at about 10 times the time an epoch,
#: the paper preset 0.760. A linear pixel branch added to the logits measured 0.832, the dense
#: branch beside the frozen nopool cut 0.834. Per-image z-normalisation never left chance on the
#: 4,000-review slice (0.500).
PRESETS = {
    "ours": {"epochs": 15, "normalize": "dataset", "optimizer": "adamw", "weight_decay": 0.1,
             "schedule": "cosine", "patience": 8, "upsample": 1, "cut": "paper",
             "unfreeze_fraction": 0.0, "pixel_branch": True},
    "paper": {"epochs": 15, "normalize": "image", "optimizer": "adam", "weight_decay": 0.0,
              "schedule": "none", "patience": 0, "upsample": 1, "cut": "paper",
              "unfreeze_fraction": 0.0, "pixel_branch": False},
}


#: the numeric settings and the Python type each is kept as (:meth:`TrainConfig.__post_init__`)
_NUMBER_FIELDS = {"epochs": int, "batch_size": int, "upsample": int, "patience": int,
                  "num_workers": int, "pixel_hidden": int, "embedding_hidden": int,
                  "lr_head": float, "lr_classifier": float, "weight_decay": float,
                  "unfreeze_fraction": float, "dropout": float}
#: how the refusal of a setting that is not a whole number names what it must be
_INT_WORDS = {"epochs": "a positive integer", "batch_size": "a positive integer",
              "upsample": "a positive integer", "patience": "an integer >= 0",
              "num_workers": f"a number of loader processes (0 to {MAX_WORKERS})"}


@dataclass(frozen=True)
class TrainConfig:
    """How to train the image route: frozen extractor -> conv head -> dense classifier.

    Parameters
    ----------
    preset : {"ours", "paper"}
        Fills every setting below that is left at ``None``: ``"paper"`` reproduces the
        paper (Table I's learning rates per extractor, Adam, per-image z-normalisation,
        15 epochs, no schedule, no early stopping), ``"ours"`` (the default) is what
        measured best on validation data (see :data:`PRESETS`). Explicit values win.
        ``dataclasses.replace`` with another preset or extractor fills the settings left
        unset again, from the new ones (the settings given, or given to it, stay).
    extractor : str
        One of :data:`fastimg.train.EXTRACTORS`: ``alexnet`` (first two convs, 192 maps),
        ``wide_resnet50_2`` and ``resnext50_32x4d`` (conv1 ... layer1), ``shufflenet_v2_x1_0``
        (conv1 + BN + stage2) or ``vgg16`` (first 12 modules of ``features``), the paper's cuts.
    weights : str, path or None
        ``"DEFAULT"`` (torchvision's ImageNet weights, from the torch hub cache or downloaded),
        ``None`` / ``"none"`` (random init, logged) or the path of a state_dict of the whole
        torchvision model, loaded with ``torch.load(weights_only=True)``.
    epochs : int or None
        Most epochs to train (early stopping may end sooner).
    batch_size : int
        Rows per step, at least 2 (BatchNorm cannot train on one sample; a last batch of one
        is skipped).
    lr_head, lr_classifier : float or None
        Learning rates of the conv head (and of any unfrozen extractor layers and the
        embedding MLP) and of the dense classifier. ``None``: the preset's value for the
        extractor, :data:`fastimg.train.extractors.PAPER_LR` (the paper's Table I) for
        ``"paper"``, :data:`fastimg.train.extractors.DEFAULT_LR` for ``"ours"``.
    optimizer : {"adamw", "adam"} or None
        ``"adam"`` (the paper; ``weight_decay`` is an L2 term in the gradient) or ``"adamw"``
        (decoupled weight decay).
    weight_decay : float or None
    schedule : {"cosine", "plateau", "none"} or None
        Learning-rate schedule: ``"cosine"`` anneals every step to 0 over ``epochs``;
        ``"plateau"`` halves the rates after two epochs in a row without a validation
        gain (``ReduceLROnPlateau(patience=1)``: the rates of the third epoch after the best
        are halved); ``"none"`` keeps them constant (the paper).
    patience : int or None
        Early stopping: end training when validation accuracy has not improved for this many
        epochs (0: never stop early). The reported model is always the best validation epoch.
    normalize : {"dataset", "image", "none"} or None
        ``"image"`` z-normalises every image on its own (the paper's mode, kept for parity);
        ``"dataset"`` standardises every pixel with the mean and standard deviation of the
        training split; ``"none"`` feeds the stored values. ``"ours"`` takes ``"dataset"``
        because it measures best on validation data. DESIGN.md's small CNN from scratch:
        0.59 (image) vs 0.75 (dataset) on 2,000 IMDB reviews. Measured here on a 2,000-review
        IMDB store (MiniLM, 256 tokens, 50 x 50; 800 train / 200 val rows), alexnet with
        random weights (ImageNet weights could not be downloaded on the measuring machine),
        cached features, batch 64, 15 epochs, seed 0: best validation accuracy 0.675
        (dataset), 0.51 (image), 0.50 (none); with image and none the head never left
        chance, even on the training split. shufflenet_v2_x1_0 (random weights, 10 epochs):
        0.705 (dataset) vs 0.615 (image). The linear probe on the embeddings got 0.795.
    upsample : int or None
        Integer nearest-neighbour upsampling of the images before the extractor (the author
        used 3x: 50 x 50 -> 150 x 150). Nearest keeps every feature's pixel a block of pixels.
    cut : {"paper", "nopool"} or None
        ``"paper"``: the paper's cut. ``"nopool"``: the same layers without their max-pools,
        so the extractor keeps 4x (alexnet, resnets, shufflenet) to 16x (vgg16) more of the
        grid: the paper's alexnet cut turns a 50 x 50 image into 5 x 5, ``"nopool"`` into
        11 x 11. The convolutions and their weights are the paper's.
    unfreeze_fraction : float or None
        Train the last fraction (0..1) of the extractor's blocks too (Miller et al. fine-tune
        the top half of their backbones). 0 keeps it frozen, which allows the feature cache
        (the paper and ``"ours"``: training the nopool cut measured worse on validation at
        full scale than the frozen paper cut, at 4 to 11 times the cost an epoch).
    fuse_embedding : bool
        Concatenate the head's features with an MLP of the raw embedding stored beside the
        images before the classifier (the multimodal variant of Miller et al.).
    pixel_branch : bool or None
        Also feed the normalised image's pixels straight to the classifier, through a dense
        branch concatenated with the conv head's features: a skip connection around the
        extractor, whose strided first convolution (with random weights above all) discards
        part of the grid. The route stays image-only. ``"ours"`` turns it on (see
        :data:`PRESETS` for the validation figures).
    cache : {"auto", "memory", "zarr", "none"}
        Frozen-feature cache. DeepInsight images must not be augmented, so a frozen
        extractor's outputs are the same every epoch: compute them once (in memory, or in
        zarr arrays kept in ``RUN_DIR/feature_cache``, or a temporary folder without a run
        folder) and train the head on them. ``"none"`` recomputes the extractor every epoch,
        as the paper did. ``"auto"``: with a fully frozen extractor, memory while the
        features of every split fit ``cache_budget``, else zarr on disk; otherwise none.
    cache_budget : str
        Most memory the ``"auto"`` cache may hold: a share of the machine's RAM (``"25%"``,
        the default) or a size (``"6GiB"``, ``"512MiB"``, a number of bytes).
    cache_dtype : {"float16", "float32"}
        dtype the cached features are kept in (float16 halves the memory).
    loader : {"auto", "dali", "torch"}
        ``"dali"`` streams batches through an NVIDIA DALI pipeline (GPU, or CPU without one),
        ``"torch"`` through a torch DataLoader; ``"auto"`` picks DALI when it is installed and a
        GPU is present, else torch (faster than DALI's CPU pipeline here: see RESULTS.md).
        Both give identical batches for the same seed.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    amp : bool
        Mixed precision (float16 autocast + gradient scaling) on CUDA; ignored on CPU.
    channels_last : bool
        channels_last memory format on CUDA; ignored on CPU.
    head_channels : tuple of int
        Output channels of the four conv layers of the head ("Conv-AE").
    hidden : tuple of int
        Widths of the first two fully connected layers (dropout after each).
    dropout : float
        Dropout after the first two fully connected layers (the paper: 0.3).
    embedding_hidden : int
        Width of the embedding MLP used by ``fuse_embedding``.
    pixel_hidden : int
        Width of the pixel branch used by ``pixel_branch``; 0 makes it a linear map of the
        pixels added to the classifier's logits (wide and deep).
    probe : bool
        Fit the linear-probe baselines (logistic regression on the stored embeddings and on
        the image pixels, C chosen on validation).
    num_workers : int
        Worker processes of the torch DataLoader / threads of the DALI pipeline.
    seed : int
        Seeds the head's initialisation, dropout and every epoch's order
        (``np.random.default_rng([seed, epoch])``). The global torch RNG is forked for the run
        and restored afterwards, so ``fit`` leaves no global random state behind.
    progress : bool
        tqdm progress bars.

    Examples
    --------
    >>> TrainConfig(preset="paper", extractor="vgg16").lr_head   # Table I
    5e-05
    """

    preset: str = "ours"
    extractor: str = "alexnet"
    weights: str | None = "DEFAULT"
    epochs: int | None = None
    batch_size: int = 128
    lr_head: float | None = None
    lr_classifier: float | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    patience: int | None = None
    normalize: str | None = None
    upsample: int | None = None
    cut: str | None = None
    unfreeze_fraction: float | None = None
    fuse_embedding: bool = False
    pixel_branch: bool | None = None
    cache: str = "auto"
    cache_budget: str = "25%"
    cache_dtype: str = "float16"
    loader: str = "auto"
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    head_channels: tuple = (128, 128, 64, 32)
    hidden: tuple = (256, 64)
    dropout: float = 0.3
    embedding_hidden: int = 256
    pixel_hidden: int = 256
    probe: bool = True
    num_workers: int = 0
    seed: int = 0
    progress: bool = True
    # the settings the preset and the extractor's rates filled in, with their values:
    # dataclasses.replace passes it on, so that the new config fills them again from its own
    # preset and extractor (they were kept: replace(paper alexnet, extractor="vgg16") trained
    # at alexnet's rates); no setting, out of to_dict, from_dict and equality
    _filled: dict | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        from fastimg.train.extractors import DEFAULT_LR, EXTRACTORS, PAPER_LR

        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {self.preset!r}")
        object.__setattr__(self, "seed", check_seed("seed", self.seed))
        check_device("device", self.device)
        if self.extractor not in EXTRACTORS:
            raise ValueError(f"unknown extractor {self.extractor!r}; choose one of "
                             f"{sorted(EXTRACTORS)}")
        for name, value in (self._filled or {}).items():
            if getattr(self, name) == value:  # carried over unchanged by dataclasses.replace
                object.__setattr__(self, name, None)
        unset = [name for name in (*PRESETS[self.preset], "lr_head", "lr_classifier")
                 if getattr(self, name) is None]
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        rates = (PAPER_LR if self.preset == "paper" else DEFAULT_LR)[self.extractor]
        for name, value in zip(("lr_head", "lr_classifier"), rates):
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if isinstance(self.weights, os.PathLike):  # kept as a str: config.json holds it
            object.__setattr__(self, "weights", os.fspath(self.weights))
        if isinstance(self.weights, str) and self.weights.lower() == "none":
            object.__setattr__(self, "weights", None)
        if not (self.weights is None or isinstance(self.weights, str)):
            raise ValueError(f"weights must be 'DEFAULT', None / 'none' or the path of a "
                             f"state_dict, got {self.weights!r}")
        self._as_python_numbers()
        object.__setattr__(self, "_filled", {name: getattr(self, name) for name in unset})
        for name in ("epochs", "batch_size", "upsample"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_size < 2:
            # the training loop skips batches of one sample (BatchNorm cannot train on them):
            # with batch_size 1 every batch would be skipped and nothing trained
            raise ValueError(f"batch_size must be at least 2 (the BatchNorm layers cannot "
                             f"train on a batch of one sample), got {self.batch_size}")
        if not 0 <= self.num_workers <= MAX_WORKERS:
            raise ValueError(f"num_workers must be a number of loader processes (0 to "
                             f"{MAX_WORKERS}), got {self.num_workers}")
        for name in ("lr_head", "lr_classifier"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.cut not in CUTS:
            raise ValueError(f"cut must be one of {CUTS}, got {self.cut!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be a finite number >= 0, got "
                             f"{self.weight_decay!r}")
        if self.patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {self.patience!r}")
        parse_budget(self.cache_budget)
        if self.normalize not in NORMALISATIONS:
            raise ValueError(f"normalize must be one of {NORMALISATIONS}, got {self.normalize!r}")
        if self.cache not in CACHES:
            raise ValueError(f"cache must be one of {CACHES}, got {self.cache!r}")
        if self.cache_dtype not in ("float16", "float32"):
            raise ValueError(f"cache_dtype must be float16 or float32, got {self.cache_dtype!r}")
        if self.loader not in LOADER_NAMES:
            raise ValueError(f"loader must be one of {LOADER_NAMES}, got {self.loader!r}")
        check_fraction("unfreeze_fraction", self.unfreeze_fraction)
        if self.unfreeze_fraction > 0 and self.cache in ("memory", "zarr"):
            raise ValueError(f"cache must be none or auto when unfreeze_fraction is above 0 "
                             f"(the feature cache needs a fully frozen extractor), got "
                             f"{self.cache}; or keep unfreeze_fraction 0 (both presets do)")
        if self.pixel_hidden < 0:
            raise ValueError(f"pixel_hidden must be >= 0, got {self.pixel_hidden}")
        if self.embedding_hidden < 1:
            raise ValueError(f"embedding_hidden must be >= 1, got {self.embedding_hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, count in (("head_channels", 4), ("hidden", 2)):
            object.__setattr__(self, name, _widths(name, getattr(self, name), count))
        for name in ("fuse_embedding", "pixel_branch", "amp", "channels_last", "probe",
                     "progress"):
            object.__setattr__(self, name, check_flag(name, getattr(self, name)))
        if is_whole(self.cache_budget):
            object.__setattr__(self, "cache_budget", str(int(self.cache_budget)))
        try:  # checked now, not after the training, when config.json is written
            json.dumps(self.to_dict())
        except TypeError as exc:
            raise ValueError(f"every setting must be a JSON number, string or boolean (the run "
                             f"folder's config.json holds them): {exc}") from None

    def _as_python_numbers(self) -> None:
        """The numeric settings as Python ints and floats, checked to be whole numbers and
        numbers: numpy's (a grid from ``np.arange`` or ``np.logspace``) were refused, or kept
        until ``config.json`` could not hold them, after the whole training."""
        for name, kind in _NUMBER_FIELDS.items():
            value = getattr(self, name)
            if kind is int:
                if not is_whole(value):
                    raise ValueError(f"{name} must be {_INT_WORDS.get(name, 'an integer')}, "
                                     f"got {value!r}")
            elif value is not None and (isinstance(value, (bool, np.bool_))
                                        or not isinstance(value, (int, float, np.number))):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if value is not None:
                object.__setattr__(self, name, kind(value))

    @property
    def resolved_cache(self) -> str:
        """The cache mode after ``"auto"``: memory when fully frozen, else none (``fit``
        falls back to zarr when the features would not fit ``cache_budget``)."""
        if self.cache == "auto":
            return "memory" if self.unfreeze_fraction == 0 else "none"
        return self.cache

    @property
    def cache_budget_bytes(self) -> int:
        """``cache_budget`` in bytes (a share of this machine's RAM, or a size)."""
        return parse_budget(self.cache_budget)

    def to_dict(self) -> dict:
        """JSON-serialisable settings (tuples become lists)."""
        out = asdict(self)
        del out["_filled"]
        out["head_channels"] = list(self.head_channels)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        check_description(cls, data)
        known = set(SETTINGS)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {sorted(unknown)}")
        return cls(**data)


#: the names of :class:`TrainConfig`'s settings (its fields but the private bookkeeping)
SETTINGS = tuple(f.name for f in fields(TrainConfig) if not f.name.startswith("_"))


def _widths(name: str, value, count: int) -> tuple:
    """``value`` as a tuple of ``count`` whole numbers >= 1, else a ValueError naming ``name``
    (``int()`` truncated a width of 2.5, and torch refused one of 0 when the model was
    built)."""
    widths = tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(widths) != count or not all(is_whole(w) and w >= 1 for w in widths):
        raise ValueError(f"{name} must be {count} whole numbers >= 1 (the paper's head: "
                         f"head_channels 4 widths, hidden 2), got {value!r}")
    return tuple(int(w) for w in widths)


_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def parse_budget(text) -> int:
    """``"25%"`` (of RAM), ``"6GiB"``, ``"512MB"`` or a number of bytes -> bytes.

    Raises
    ------
    ValueError
        Anything else, or a share outside (0, 100].
    """
    import re

    value = str(text).strip().lower().replace(" ", "")
    if value.endswith("%"):
        try:
            share = float(value[:-1])
        except ValueError:
            share = -1.0
        if not 0 < share <= 100:
            raise ValueError(f"cache_budget share must be in (0, 100]%, got {text!r}")
        return int(total_memory_bytes() * share / 100)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgt]i?b|b)?", value)
    if not match:
        raise ValueError(f"cache_budget must be a share of RAM ('25%') or a size ('6GiB', "
                         f"'512MiB', bytes), got {text!r}")
    number = float(match.group(1))
    if match.group(2) is None and not number.is_integer():  # 0.5 was 0 bytes, not half the RAM
        share = f" (a share of RAM is written '{number * 100:g}%')" if number < 1 else ""
        raise ValueError(f"cache_budget {text!r} is not a whole number of bytes{share}")
    return int(number * _UNITS[match.group(2) or ""])
