"""Encoder stage: texts -> [CLS] (or mean) vectors of chosen transformer layers, concatenated.

>>> from fastimg.embed import EncoderConfig, encode
>>> x = encode(["a fine film", "a dull one"], EncoderConfig(model="minilm"))  # doctest: +SKIP
>>> x.shape, x.dtype  # doctest: +SKIP
((2, 2304), dtype('float16'))
"""
from fastimg.embed.config import EncoderConfig, resolve_layers
from fastimg.embed.encoder import encode, encode_chunks
from fastimg.embed.flops import model_flops
from fastimg.embed.models import (
    MODEL_ALIASES,
    LoadedModel,
    ModelNotAvailableError,
    load_model,
    resolve_model,
)
from fastimg.embed.plan import ENCODE_DEVICES
from fastimg.embed.resume import encode_to_array, run_settings
from fastimg.embed.texts import EmptyTextWarning, check_texts, texts_digest

__all__ = [
    "ENCODE_DEVICES", "EmptyTextWarning", "EncoderConfig", "LoadedModel", "MODEL_ALIASES",
    "ModelNotAvailableError", "check_texts", "encode", "encode_chunks", "encode_to_array",
    "load_model", "model_flops", "resolve_layers", "resolve_model", "run_settings",
    "texts_digest",
]
