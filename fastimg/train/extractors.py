"""The paper's frozen extractor cuts, and where their ImageNet weights come from.

Each entry of :data:`EXTRACTORS` builds the torchvision model, loads its weights, and keeps
the early layers the paper keeps, as an ``nn.Sequential`` of blocks (the unit that
``unfreeze_fraction`` counts).
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from fastimg._files import replace_file
from fastimg._validation import check_fraction
from fastimg.train.config import CUTS

logger = logging.getLogger("fastimg.train")

#: Seconds the download of missing ImageNet weights may wait for the server.
DOWNLOAD_TIMEOUT_S = 15.0

#: (head "CAE", classifier "LC") learning rates of the paper's Table I (DESIGN.md), used by
#: ``TrainConfig(preset="paper")``.
PAPER_LR = {
    "alexnet": (1e-5, 5e-4),
    "wide_resnet50_2": (5e-5, 1e-4),
    "resnext50_32x4d": (5e-5, 1e-3),
    "shufflenet_v2_x1_0": (5e-4, 1e-3),
    "vgg16": (5e-5, 1e-3),
}

#: (head, classifier) learning rates of the default preset ``"ours"``: 1e-3 for both (with
#: AdamW and a cosine schedule), for every extractor. On the full IMDB store (random weights,
#: benchmarks/RESULTS.md, Accuracy) the ``"ours"`` preset beat ``"paper"`` (Table I's rates,
#: :data:`PAPER_LR`, with the paper's other settings) on validation for every extractor measured;
#: the rates alone were not separated from the rest of the preset.
DEFAULT_LR = {name: (1e-3, 1e-3) for name in PAPER_LR}


class WeightsUnavailableError(OSError):
    """ImageNet weights are neither in the torch hub cache nor downloadable."""


class StateDictError(ValueError):
    """A file that ``torch.load(weights_only=True)`` cannot read as a state_dict; the message
    is the short reason (callers name the file)."""


#: Longest reason :func:`load_state_dict` keeps of ``torch.load``'s message.
REASON_CHARS = 160


def load_failure_reason(exc: BaseException) -> str:
    """The first sentence of ``torch.load``'s error, on one line.

    ``torch.load`` explains a refused unpickling at length (and suggests
    ``weights_only=False``, which runs arbitrary code): only what went wrong is kept.
    """
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    text = " ".join(paragraphs[0].split()) if paragraphs else ""
    text = re.split(r"(?<=[a-z0-9)])\. ", text, maxsplit=1)[0].rstrip(".")
    if not text:
        text = ("the file ends too early" if isinstance(exc, EOFError)
                else type(exc).__name__)
    if len(text) > REASON_CHARS:
        text = text[:REASON_CHARS - 3].rstrip() + "..."
    return text


def load_state_dict(path) -> dict:
    """``torch.load(path, map_location="cpu", weights_only=True)``, checked to be a state_dict.

    Parameters
    ----------
    path : str or path
        A file (the caller checks that it exists).

    Returns
    -------
    dict
        Parameter and buffer names -> tensors.

    Raises
    ------
    StateDictError
        (a ``ValueError``) When torch cannot read the file (not written by ``torch.save``,
        truncated, corrupt, or holding objects ``weights_only`` refuses) or it holds something
        other than a dict of tensors; the message is the short reason.
    OSError
        When the file cannot be read at all (permissions).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the file's, not ours
        raise StateDictError(f"torch.load: {load_failure_reason(exc)}") from None
    if not isinstance(state, dict):
        raise StateDictError(f"it holds a {type(state).__name__}, not a dict of tensors")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise StateDictError(f"its entry {key!r} is a {type(value).__name__}, not a tensor "
                                 f"(a training checkpoint? save model.state_dict() instead)")
    return state


def check_weights(weights) -> None:
    """Refuse a weights path that is missing or a folder, before any work.

    Parameters
    ----------
    weights : {"DEFAULT", None, "none"} or path
        See :func:`resolve_weights`; only a path is checked.

    Raises
    ------
    FileNotFoundError
        When the path does not exist.
    IsADirectoryError
        When it is a folder.
    """
    if weights is None or (isinstance(weights, str) and weights.lower() in ("none", "default")):
        return
    path = Path(weights)
    hint = "give a state_dict file saved with torch.save, 'DEFAULT' or 'none'"
    if path.is_dir():
        raise IsADirectoryError(f"weights path {path} is a directory, not a file ({hint})")
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist ({hint})")


def _cut_alexnet(model):
    # features: conv(64) relu pool conv(192) relu | pool ...: the first two convs, 192 maps
    return list(model.features[:5])


def _cut_resnet(model):
    return [model.conv1, model.bn1, model.relu, model.maxpool, *model.layer1]


def _cut_shufflenet(model):
    # conv1 is Conv + BN + ReLU; its max-pool sits between conv1 and stage2 in torchvision
    return [model.conv1, model.maxpool, *model.stage2]


def _cut_vgg16(model):
    return list(model.features[:12])


@dataclass(frozen=True)
class ExtractorSpec:
    """One registry entry: the torchvision builder name, the cut, and its output channels."""

    name: str
    cut: Callable
    channels: int


EXTRACTORS = {
    "alexnet": ExtractorSpec("alexnet", _cut_alexnet, 192),
    "wide_resnet50_2": ExtractorSpec("wide_resnet50_2", _cut_resnet, 256),
    "resnext50_32x4d": ExtractorSpec("resnext50_32x4d", _cut_resnet, 256),
    "shufflenet_v2_x1_0": ExtractorSpec("shufflenet_v2_x1_0", _cut_shufflenet, 116),
    "vgg16": ExtractorSpec("vgg16", _cut_vgg16, 256),
}


def _hub_checkpoint(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _download(url: str, dest: Path, timeout: float) -> None:
    """Fetch ``url`` into ``dest`` atomically (a partial download never looks complete)."""
    dest.parent.mkdir(parents=True, exist_ok=True)

    def fetch(tmp: Path) -> None:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)

    replace_file(dest, fetch, write_through=False)


def resolve_weights(name: str, weights, *, timeout: float = DOWNLOAD_TIMEOUT_S):
    """The state_dict to load into torchvision's ``name`` model, or None for random init.

    Parameters
    ----------
    name : str
        A key of :data:`EXTRACTORS`.
    weights : {"DEFAULT", None, "none"} or path
        ``"DEFAULT"``: torchvision's ImageNet weights, read from
        ``torch.hub.get_dir()/checkpoints/<file name of the weights URL>`` when present, or
        downloaded there. ``None``: random init. A path: a state_dict saved with
        ``torch.save``, loaded with ``weights_only=True``.

    Raises
    ------
    WeightsUnavailableError
        When ``"DEFAULT"`` is not cached and cannot be downloaded; the message names the
        exact path to put the file at and the URL to get it from.
    FileNotFoundError
        When a weights path does not exist.
    IsADirectoryError
        When a weights path is a folder.
    StateDictError
        (a ``ValueError``) When a weights file is not a torch state_dict (not written by
        ``torch.save``, truncated or corrupt); the message names the file and the reason.
    """
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        logger.info("%s: random initialisation (weights=None), not ImageNet weights", name)
        return None
    if isinstance(weights, str) and weights.upper() == "DEFAULT":
        import torchvision

        url = torchvision.models.get_model_weights(name).DEFAULT.url
        path = _hub_checkpoint(url)
        if not path.is_file():
            logger.info("%s: downloading ImageNet weights from %s to %s", name, url, path)
            try:
                _download(url, path, timeout)
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                raise WeightsUnavailableError(
                    f"ImageNet weights of {name} are not in the torch hub cache and could not "
                    f"be downloaded ({exc}); download {url} and put the file at {path} (or pass "
                    f"weights='none' for random init, or a state_dict path)"
                ) from None
        else:
            logger.info("%s: ImageNet weights from %s", name, path)
        try:
            return load_state_dict(path)
        except StateDictError as exc:
            raise WeightsUnavailableError(
                f"the cached ImageNet weights of {name}, {path}, are unreadable (truncated or "
                f"corrupt? {exc}): delete the file to download it again") from None
    check_weights(weights)
    path = Path(weights)
    logger.info("%s: weights from %s", name, path)
    try:
        return load_state_dict(path)
    except StateDictError as exc:
        raise StateDictError(f"weights file {path} is not a torch state_dict ({exc}); give a "
                             f"state_dict saved with torch.save, 'DEFAULT' or 'none'") from None


def build_extractor(name: str, weights="DEFAULT", *, unfreeze_fraction: float = 0.0,
                    cut: str = "paper"):
    """The frozen early layers of a pretrained CNN, as the paper cuts them.

    Parameters
    ----------
    name : str
        A key of :data:`EXTRACTORS`.
    weights : {"DEFAULT", None, "none"} or path
        ImageNet's, random init or a state_dict file
        (:func:`fastimg.train.extractors.resolve_weights`).
    unfreeze_fraction : float
        In [0, 1]: the last ``ceil(fraction * n)`` of the cut's ``n`` blocks with parameters
        stay trainable; the rest are frozen.
    cut : {"paper", "nopool"}
        ``"nopool"`` drops the cut's max-pool layers (the same convolutions and weights),
        so more of the DeepInsight grid reaches the head.

    Returns
    -------
    FrozenExtractor
        Input ``[B, 3, H, W]``, output ``[B, channels, h, w]``.

    Raises
    ------
    ValueError
        An unknown ``name`` or ``cut``, an ``unfreeze_fraction`` outside [0, 1], or a weights
        file that is not a state_dict of the model; as :func:`resolve_weights` for the rest.
    """
    import torchvision

    if name not in EXTRACTORS:
        raise ValueError(f"unknown extractor {name!r}; choose one of {sorted(EXTRACTORS)}")
    if cut not in CUTS:
        raise ValueError(f"cut must be one of {CUTS}, got {cut!r}")
    # 2 made every block trainable and -1 none, unsaid (TrainConfig refuses both)
    check_fraction("unfreeze_fraction", unfreeze_fraction)
    spec = EXTRACTORS[name]
    state = resolve_weights(name, weights)
    # build on the meta device: only the cut is materialised (the dense layers of alexnet
    # and vgg16 hold most of their parameters and would take seconds to initialise)
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None)
    qualnames = {id(m): n for n, m in model.named_modules()}
    blocks = spec.cut(model)
    if cut == "nopool":
        blocks = [b for b in blocks if not isinstance(b, nn.MaxPool2d)]
    extractor = FrozenExtractor(blocks, spec.channels, unfreeze_fraction).to_empty(device="cpu")
    if state is None:
        for module in extractor.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()  # PyTorch's default init; BN stats reset too
    else:
        sub = {}
        for i, block in enumerate(blocks):
            prefix = qualnames[id(block)]
            for key in block.state_dict():
                full = f"{prefix}.{key}"
                if full not in state:
                    raise ValueError(f"the {name} weights lack {full!r}: give a state_dict of "
                                     f"torchvision's whole {name} model")
                sub[f"{i}.{key}"] = state[full]
        extractor.load_state_dict(sub)
    return extractor


class FrozenExtractor(nn.Sequential):
    """Blocks of a pretrained CNN; frozen blocks keep ``requires_grad=False`` and stay in eval
    mode (their BatchNorm running statistics never move) even under ``.train()``.

    Parameters
    ----------
    blocks : sequence of nn.Module
    channels : int
        Output channels of the last block.
    unfreeze_fraction : float
        The last ``ceil(fraction * n)`` of the ``n`` blocks with parameters stay trainable.
    """

    def __init__(self, blocks, channels: int, unfreeze_fraction: float = 0.0):
        super().__init__(*blocks)
        self.channels = channels
        with_params = [i for i, b in enumerate(self) if any(True for _ in b.parameters())]
        n_open = math.ceil(unfreeze_fraction * len(with_params))
        self.trainable_blocks = frozenset(with_params[len(with_params) - n_open:] if n_open
                                          else ())
        for i, block in enumerate(self):
            block.requires_grad_(i in self.trainable_blocks)
        self.train(False)

    @property
    def fully_frozen(self) -> bool:
        """True when no block trains (its outputs can be cached)."""
        return not self.trainable_blocks

    def train(self, mode: bool = True):
        super().train(mode)
        for i, block in enumerate(self):
            if i not in self.trainable_blocks:
                block.train(False)
        return self
