"""What an encoder run resolves once, before it loads weights: device, precision, layers, token
budget, feature count and, for int8, the engine."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from fastimg._registry import Registry, torch_cuda_available
from fastimg.embed import precision as precision_mod
from fastimg.embed.config import EncoderConfig, resolve_layers
from fastimg.embed.models import LoadedModel, encoder_dims, resolve_model

logger = logging.getLogger("fastimg.embed")

__all__ = ["DEFAULT_BUDGET", "ENCODE_DEVICES", "Plan", "make_plan"]

#: tokens per batch when ``config.token_budget`` is 0, per device kind
DEFAULT_BUDGET = {"cpu": 8192, "cuda": 65536}

#: Device of the encoder: ``"auto"`` picks CUDA when torch sees a GPU, else the CPU.
ENCODE_DEVICES = Registry("encode device", setting="device")
ENCODE_DEVICES.add("cuda", lambda: "cuda", available=torch_cuda_available, priority=2)
ENCODE_DEVICES.add("cpu", lambda: "cpu", priority=1)


@dataclass(frozen=True)
class Plan:
    """Everything resolved once per run."""

    device: str
    precision: precision_mod.PrecisionBackend
    layers: tuple[int, ...]
    token_budget: int
    n_features: int
    int8_engine: str | None  # "onnxruntime" or "torch" with int8, else None


def _resolve_device(config: EncoderConfig) -> str:
    """The device kind; with ``device="auto"`` a precision that names its device wins (int8 runs
    on the CPU even beside a GPU; fp16 / bf16 need CUDA)."""
    device = ENCODE_DEVICES.resolve(config.device)
    if config.device != "auto" or config.precision == "auto":
        return device
    devices = precision_mod.BACKENDS[config.precision].devices
    if device in devices:
        return device
    if "cpu" in devices:
        logger.info("precision %r runs on the CPU: device 'auto' resolved to cpu",
                    config.precision)
        return "cpu"
    raise ValueError(f"precision {config.precision!r} needs a CUDA GPU and torch sees none "
                     f"(the CPU precisions are fp32 and int8)")


#: models whose position ids start after the padding id (``padding_idx + 1``): two positions
#: fewer than ``max_position_embeddings`` hold tokens
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer")


def _positions(model_config) -> int | None:
    """How many tokens a text may have in this model, when its config says."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    if getattr(model_config, "model_type", None) in _OFFSET_POSITIONS:
        positions -= 2
    return positions


def make_plan(config: EncoderConfig, model: LoadedModel | None):
    """``(plan, model source)``, without loading weights when no model is given.

    Raises
    ------
    ValueError
        When the device, precision, length or layers do not fit each other or the model, or
        the model is no encoder fastimg can pool (:func:`~fastimg.embed.models.encoder_dims`).
    """
    if model is not None:
        src, model_config = model.source, model.model.config
    else:
        src = resolve_model(config.model, config.revision)
        model_config = src.hf_config()
    n_layers, hidden = encoder_dims(model_config, config.model, config.pooling)
    device = _resolve_device(config)
    precision = precision_mod.resolve(config.precision, device)
    ENCODE_DEVICES.check(device)  # after the precision's own refusal of this device
    positions = _positions(model_config)
    if positions is not None and config.max_length > positions:
        raise ValueError(f"max_length {config.max_length} is longer than the {positions} "
                         f"positions of model {config.model!r}")
    layers = resolve_layers(config.layers, n_layers)
    budget = config.token_budget or DEFAULT_BUDGET[device]
    engine = (precision_mod.int8_engine(config.int8_engine, config.batching,
                                        model_config) if precision.quantize else None)
    return Plan(device, precision, layers, max(budget, config.max_length), len(layers) * hidden,
                engine), src
