"""Embedded data sets (no download): MNIST-1D, scikit-learn digits, and
CIFAR-10 read from a local directory in its python-pickle batch format."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
  x_train: np.ndarray  # (N, ...) float32, channels last
  y_train: np.ndarray  # (N,) int32
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int


def _cache_dir() -> Path:
  root = os.environ.get("NORMOPT_CACHE", Path.home() / ".cache" / "normopt")
  path = Path(root)
  path.mkdir(parents=True, exist_ok=True)
  return path


def mnist1d(num_samples: int = 50_000, seed: int = 42) -> Dataset:
  """MNIST-1D generated offline by the ``mnist1d`` package (80/20 split),
  cached as .npz (generating 50 000 samples takes ~15 s)."""
  cache = _cache_dir() / f"mnist1d_{num_samples}_{seed}.npz"
  if not cache.exists():
    from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    d = make_dataset(args)
    np.savez(cache, x=d["x"], y=d["y"], x_test=d["x_test"], y_test=d["y_test"])
  d = np.load(cache)
  prep = lambda x: np.asarray(x, np.float32)[..., None]  # noqa: E731
  return Dataset(prep(d["x"]), d["y"].astype(np.int32), prep(d["x_test"]),
                 d["y_test"].astype(np.int32), 10)


def digits(seed: int = 0) -> Dataset:
  """scikit-learn's 8x8 digits (1797 images), standardized, 80/20 split."""
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  x = ((x - x.mean()) / x.std()).astype(np.float32).reshape(-1, 8, 8, 1)
  perm = np.random.default_rng(seed).permutation(len(y))
  x, y = x[perm], y[perm].astype(np.int32)
  split = int(0.8 * len(y))
  return Dataset(x[:split], y[:split], x[split:], y[split:], 10)


def _read_cifar_batch(path: Path):
  try:
    with open(path, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
    data = np.asarray(batch[b"data"], np.uint8)
    labels = np.asarray(batch[b"labels"], np.int32)
  except (pickle.UnpicklingError, KeyError, EOFError, TypeError) as e:
    raise ValueError(f"{path} is not a CIFAR-10 python batch file: {e!r}") from e
  if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
    raise ValueError(f"{path}: expected data of shape (N, 3072) and N labels, "
                     f"got {data.shape} and {labels.shape}")
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def cifar10(data_dir: str | os.PathLike) -> Dataset:
  """CIFAR-10 from ``data_dir`` holding ``data_batch_1..5`` and
  ``test_batch`` (the standard ``cifar-10-batches-py`` folder)."""
  root = Path(data_dir)
  if not root.is_dir():
    raise FileNotFoundError(f"CIFAR-10 directory not found: {root}")
  train_files = sorted(root.glob("data_batch_*"))
  test_file = root / "test_batch"
  if not train_files or not test_file.exists():
    raise FileNotFoundError(
        f"{root} must contain data_batch_1..5 and test_batch "
        "(the cifar-10-batches-py format)")
  parts = [_read_cifar_batch(p) for p in train_files]
  x_tr = np.concatenate([p[0] for p in parts])
  y_tr = np.concatenate([p[1] for p in parts])
  x_te, y_te = _read_cifar_batch(test_file)
  mean = x_tr.reshape(-1, 3).mean(0)
  std = x_tr.reshape(-1, 3).std(0)
  norm = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731
  return Dataset(norm(x_tr), y_tr, norm(x_te), y_te, 10)


def load(name: str, data_dir: str | None = None,
         num_samples: int = 50_000) -> Dataset:
  if name == "mnist1d":
    return mnist1d(num_samples)
  if name == "digits":
    return digits()
  if name == "cifar10":
    if data_dir is None:
      raise ValueError("--data_dir is required for cifar10")
    return cifar10(data_dir)
  raise ValueError(f"unknown dataset {name!r}; choose mnist1d, digits, cifar10")
