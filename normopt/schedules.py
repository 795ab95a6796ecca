"""Epoch-keyed schedules and increasing batch size (mini-batch QHM paper)."""

from normopt._src.schedules import (
                                    accumulation_steps,
                                    check_divisible,
                                    constant,
                                    constant_batch,
                                    cosine,
                                    exponential_batch,
                                    increasing_beta,
                                    inverse_decay,
                                    per_step,
                                    polynomial,
                                    sqrt_decay,
                                    step_decay,
                                    step_to_epoch,
)

__all__ = (
    "accumulation_steps",
    "check_divisible",
    "constant",
    "constant_batch",
    "cosine",
    "exponential_batch",
    "increasing_beta",
    "inverse_decay",
    "per_step",
    "polynomial",
    "sqrt_decay",
    "step_decay",
    "step_to_epoch",
)
