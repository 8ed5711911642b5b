"""A FLOP model of the BERT forward, to compare the encoder's achieved rate with the matmul peak."""
from __future__ import annotations

import numpy as np

from fastimg._validation import check_count


def model_flops(lengths, n_layers_run: int, hidden: int, intermediate: int, *,
                first_token_last_layer: bool = False) -> float:
    """Matmul FLOPs of a BERT forward over sequences of ``lengths`` tokens (no padding).

    A full layer costs ``2*T*(4*H*H + 2*H*I)`` for the projections and the FFN plus ``4*T*T*H``
    for attention scores and weighted values. With ``first_token_last_layer`` (what the encoder
    runs for [CLS] pooling) the last layer computes keys and values for all ``T`` tokens but
    queries, attention, output projection and FFN for the first token only.

    Parameters
    ----------
    lengths : array-like of int
        Tokens per sequence.
    n_layers_run : int
        Transformer layers computed.
    hidden, intermediate : int
        The model's hidden and FFN widths.
    first_token_last_layer : bool
        Count the last layer as the [CLS] fast path runs it.

    Returns
    -------
    float
        Multiply-adds counted as two FLOPs.

    Raises
    ------
    ValueError
        Negative lengths, widths below 1, or fewer layers than the count needs (1 with
        ``first_token_last_layer``, which counts the last one apart; else 0).
    """
    t = np.asarray(lengths, dtype=np.float64)
    if (t < 0).any():
        raise ValueError("lengths must be token counts >= 0")
    check_count("hidden", hidden)
    check_count("intermediate", intermediate)
    check_count("n_layers_run", n_layers_run, 1 if first_token_last_layer else 0)
    h, i = float(hidden), float(intermediate)
    full = 2.0 * t * (4 * h * h + 2 * h * i) + 4.0 * t ** 2 * h
    if not first_token_last_layer:
        return float(full.sum() * n_layers_run)
    last = 2.0 * t * (2 * h * h) + 2.0 * (2 * h * h + 2 * h * i) + 4.0 * t * h
    return float(full.sum() * (n_layers_run - 1) + last.sum())
