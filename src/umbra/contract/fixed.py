"""Fixed-point helpers for deterministic contracts.

Replicated commands must produce bit-identical state and output on every replica, or the chain
cannot settle them (and slashes the dissenter). Floating-point results can differ across
hardware and libraries: a BLAS kernel may sum in another order, a GPU may fuse a multiply-add.
So a command that computes with floats (inference, FedAvg, pricing) should quantize its results
to integers before it stores or returns them, and aggregate in integers from then on:

    from umbra.contract import fixed

    scores = fixed.quantize_all(model_outputs, scale=10**4)      # floats -> ints, round half to even
    self.state["weights"] = fixed.mean_vectors(updates)           # integer FedAvg, exact rounding
    return fixed.dequantize(scores[0], scale=10**4)               # only for display: not for state

Pick the scale so that the expected cross-hardware error of the float result is far below one
unit (1 / scale); a value that lands within that error of a rounding boundary can still split
replicas, so coarser is safer. All integer helpers here round half to even, exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = [
    "DEFAULT_SCALE",
    "dequantize",
    "div",
    "mean",
    "mean_vectors",
    "mul",
    "quantize",
    "quantize_all",
    "round_div",
    "weighted_mean",
    "weighted_mean_vectors",
]

DEFAULT_SCALE = 10**6


def _scale(scale: int) -> int:
    if not isinstance(scale, int) or isinstance(scale, bool) or scale <= 0:
        raise ValueError("scale must be a positive int")
    return scale


def round_div(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to the nearest int, ties to even. Exact for any ints."""
    if denominator == 0:
        raise ZeroDivisionError("round_div by zero")
    if denominator < 0:
        numerator, denominator = -numerator, -denominator
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def quantize(value: float, scale: int = DEFAULT_SCALE) -> int:
    """round(value * scale), ties to even. Refuses NaN and infinities, which have no fixed point."""
    if not math.isfinite(value):
        raise ValueError(f"cannot quantize {value!r}")
    # One IEEE multiplication and Python's correctly rounded round(): the same on every machine.
    return round(float(value) * _scale(scale))


def quantize_all(values: Iterable[float], scale: int = DEFAULT_SCALE) -> list[int]:
    """quantize() over any iterable of numbers (a list, a numpy array, ...)."""
    return [quantize(float(v), scale) for v in values]


def dequantize(value: int, scale: int = DEFAULT_SCALE) -> float:
    """The float a fixed-point value stands for. For display and inputs, not for stored results."""
    return value / _scale(scale)


def mul(a: int, b: int, scale: int = DEFAULT_SCALE) -> int:
    """a * b for two values of the same scale, result in that scale."""
    return round_div(a * b, _scale(scale))


def div(a: int, b: int, scale: int = DEFAULT_SCALE) -> int:
    """a / b for two values of the same scale, result in that scale."""
    return round_div(a * _scale(scale), b)


def mean(values: Sequence[int]) -> int:
    """Integer mean, rounded half to even."""
    if not values:
        raise ValueError("mean of no values")
    return round_div(sum(values), len(values))


def weighted_mean(values: Sequence[int], weights: Sequence[int]) -> int:
    """sum(v * w) / sum(w), rounded half to even. Weights are ints (e.g. sample counts)."""
    if len(values) != len(weights) or not values:
        raise ValueError("values and weights must be non-empty and of equal length")
    total = sum(weights)
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError("weights must be non-negative with a positive sum")
    return round_div(sum(v * w for v, w in zip(values, weights, strict=True)), total)


def mean_vectors(vectors: Sequence[Sequence[int]]) -> list[int]:
    """Element-wise mean of equal-length integer vectors (FedAvg with equal weights)."""
    return weighted_mean_vectors(vectors, [1] * len(vectors))


def weighted_mean_vectors(vectors: Sequence[Sequence[int]], weights: Sequence[int]) -> list[int]:
    """Element-wise weighted mean of equal-length integer vectors (FedAvg by sample count)."""
    if not vectors or len(vectors) != len(weights):
        raise ValueError("vectors and weights must be non-empty and of equal length")
    width = len(vectors[0])
    if any(len(v) != width for v in vectors):
        raise ValueError("all vectors must have the same length")
    return [weighted_mean([v[i] for v in vectors], weights) for i in range(width)]
