"""Increasing batch size vs decaying learning rate with mini-batch QHM.

The QHM paper (Kamo & Iiduka, Sec. 5) trains with the batch doubling every
E epochs and a constant learning rate, and finds it beats a fixed batch with
a decaying learning rate at an equal epoch budget. This runs the analogue on
MNIST-1D with the 1-D CNN: QHM (β = 0.9, ν = 0.7), the batch
``b_0 · 2^⌊m/E⌋`` capped at ``b_max`` realised by accumulating micro-batches of
``b_0`` (``optax.MultiSteps`` driven by ``normopt.schedules``), against a fixed
batch ``b_0`` with constant, cosine and 1/√(m+1) learning rates and a fixed
batch ``b_max`` with a constant one. The settings live in
``benchmarks/configs/increasing_batch.json``; every setting's learning rate
is tuned by the same protocol as the main command's
(:mod:`benchmarks.sweep`), and the outputs are the same.

    python -m benchmarks.increasing_batch            # 3-point grids, 1 seed
    python -m benchmarks.increasing_batch --full     # 5-point grids, 3 seeds
"""

from __future__ import annotations

import sys

from benchmarks import large_batch


def main(argv=None) -> None:
  """Runs the study; ``argv`` defaults to the command line."""
  argv = sys.argv[1:] if argv is None else argv
  large_batch.main(["--config", "increasing_batch", *argv])


if __name__ == "__main__":
  main()
