"""Analytic FLOP counts of ViT encoders and predictors (a multiply-add counts as 2 FLOPs).

Used for model FLOPs utilisation (MFU): the matrix work a step needs, whatever the implementation does.
A training pass of a module costs 3x its forward (forward + backward for activations and weights).
Norms, softmax and GELU are not counted (they are not matrix work), as in the PaLM / torchtitan MFU.
"""

from __future__ import annotations


def linear_flops(tokens: float, fan_in: int, fan_out: int) -> float:
    return 2.0 * tokens * fan_in * fan_out


def blocks_flops(tokens: int, width: int, depth: int, mlp_ratio: float = 4.0, sequences: float = 1.0) -> float:
    """Forward FLOPs of ``depth`` transformer blocks on ``sequences`` sequences of ``tokens`` tokens."""
    hidden = int(width * mlp_ratio)
    per_token = linear_flops(1, width, 3 * width) + linear_flops(1, width, width) + 2 * linear_flops(1, width, hidden)
    attention = 2 * 2.0 * tokens * width  # Q K^T and A V, per token
    return sequences * tokens * depth * (per_token + attention)


def encoder_flops(config, tokens: int, sequences: float = 1.0, embedded: int | None = None) -> float:
    """Forward FLOPs of the ViT ``config`` (an EncoderConfig) running its blocks on ``tokens`` tokens per
    sequence, after embedding ``embedded`` patches (default ``tokens``; a visible-token encoder embeds
    every patch, then keeps the visible ones)."""
    embedded = tokens if embedded is None else embedded
    patch = linear_flops(
        embedded * sequences, config.patch_size**2 * config.in_chans * config.tubelet, config.embed_dim
    )
    return patch + blocks_flops(tokens, config.embed_dim, config.depth, config.mlp_ratio, sequences)


def masked_student_flops(config, batch: dict, head, out_dim: int) -> tuple[int, float]:
    """Forward FLOPs of a masked-prediction student on one batch: the visible-token encoder ``config`` on the
    context tokens, plus a narrow head (``head``: width, depth, mlp_ratio; a predictor or a decoder) mapping
    context and mask tokens to ``out_dim`` values per target token. Returns (tokens per image, FLOPs)."""
    b, k = batch["context"].shape
    _, m, t = batch["targets"].shape
    n_tok = 1
    for g in config.token_grid(tuple(batch["images"].shape[2:])):
        n_tok *= g
    encoder = encoder_flops(config, k, b, embedded=n_tok)
    predictor = (
        linear_flops(b * k, config.embed_dim, head.width)
        + blocks_flops(k + t, head.width, head.depth, head.mlp_ratio, b * m)
        + linear_flops(b * m * t, head.width, out_dim)
    )
    return n_tok, encoder + predictor
