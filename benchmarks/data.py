"""Embedded data sets (no download): MNIST-1D, scikit-learn digits, the
Python standard library's source as bytes (language modeling), a synthetic
click log (click-through prediction), and CIFAR-10 read from a local
directory in its python-pickle batch format."""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import sysconfig
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
  x_train: np.ndarray  # (N, ...) float32 channels last, or int32 tokens/ids
  y_train: np.ndarray  # (N,) or (N, T) int32
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  # a validation split of its own (the byte corpus: held-out files);
  # otherwise train.load_data holds out the last training examples
  x_validation: np.ndarray | None = None
  y_validation: np.ndarray | None = None


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


# The byte corpus: the standard library's top-level modules, sorted by name;
# file i goes to test if i % 10 == 0, to validation if i % 10 == 1, else to
# training. Its bytes vary with the interpreter: record corpus_info().
SEQUENCE_LENGTH = 64
HELD_OUT_WINDOWS = 1024  # validation and test windows each


def corpus_files() -> dict[str, list[Path]]:
  """The corpus's files by split (``train``, ``validation``, ``test``)."""
  root = Path(sysconfig.get_paths()["stdlib"])
  files = sorted(root.glob("*.py"))
  if len(files) < 30:
    raise FileNotFoundError(f"the standard library source at {root} has only "
                            f"{len(files)} top-level .py files")
  splits: dict[str, list[Path]] = {"train": [], "validation": [], "test": []}
  for i, f in enumerate(files):
    splits["test" if i % 10 == 0 else "validation" if i % 10 == 1
           else "train"].append(f)
  return splits


def corpus_info() -> dict:
  """Python version, file counts, bytes and a SHA-256 fingerprint of the
  corpus (stored with the language-model results)."""
  digest = hashlib.sha256()
  info = {"python": sys.version.split()[0],
          "stdlib": sysconfig.get_paths()["stdlib"]}
  for split, files in corpus_files().items():
    raw = b"".join(f.read_bytes() for f in files)
    digest.update(raw)
    info[f"{split}_files"], info[f"{split}_bytes"] = len(files), len(raw)
  return info | {"sha256": digest.hexdigest()}


def _windows(raw: bytes, length: int, count: int | None):
  """Non-overlapping windows: inputs ``raw[i:i+length]``, targets shifted
  by one byte."""
  tokens = np.frombuffer(raw, np.uint8).astype(np.int32)
  n = (len(tokens) - 1) // length
  if count is not None:
    n = min(n, count)
  x = tokens[:n * length].reshape(n, length)
  y = tokens[1:n * length + 1].reshape(n, length)
  return x, y


def python_source(num_samples: int = 50_000,
                  length: int = SEQUENCE_LENGTH) -> Dataset:
  """Byte-level language modeling on the standard library's source:
  ``num_samples`` training windows of ``length`` bytes (from the start of
  the training files), :data:`HELD_OUT_WINDOWS` validation and test
  windows from held-out files; targets are the next bytes."""
  splits = {k: b"".join(f.read_bytes() for f in v)
            for k, v in corpus_files().items()}
  x_tr, y_tr = _windows(splits["train"], length, num_samples)
  x_va, y_va = _windows(splits["validation"], length, HELD_OUT_WINDOWS)
  x_te, y_te = _windows(splits["test"], length, HELD_OUT_WINDOWS)
  return Dataset(x_tr, y_tr, x_te, y_te, 256, x_va, y_va)


def unigram_perplexity(train_targets: np.ndarray,
                       targets: np.ndarray) -> float:
  """Perplexity on ``targets`` of the byte frequencies of
  ``train_targets`` (add-one smoothed): the baseline a model must beat."""
  counts = np.bincount(train_targets.ravel(), minlength=256) + 1.0
  log_p = np.log(counts / counts.sum())
  return float(np.exp(-log_p[targets.ravel()].mean()))


# The click log: CLICK_FIELDS categorical fields of CLICK_VOCABULARY ids each
# (Zipf-distributed), ids offset per field into one table of
# CLICK_FIELDS * CLICK_VOCABULARY rows.
CLICK_FIELDS = 16
CLICK_VOCABULARY = 2000


def click_log(num_samples: int = 200_000, seed: int = 0,
              zipf: float = 1.2, positive_rate: float = 0.04) -> Dataset:
  """A synthetic click log, generated offline (seeded; cached as .npz).

  Each example has :data:`CLICK_FIELDS` categorical fields with ids drawn
  from a Zipf law of exponent ``zipf`` (a few ids are frequent, most are
  rare, so most embedding rows get a gradient in few steps). The hidden
  click model is a field-aware factorization machine: a logit of
  per-id weights plus pairwise dot products of per-id latent vectors (rank
  4), shifted so that about ``positive_rate`` of the examples click; the
  label is a Bernoulli draw from it. ``num_samples`` are split 80/10/10
  into train, validation and test.
  """
  cache = _cache_dir() / (f"click_log_{num_samples}_{seed}_{zipf}_"
                          f"{positive_rate}.npz")
  if not cache.exists():
    rng = np.random.default_rng(seed)
    f, v = CLICK_FIELDS, CLICK_VOCABULARY
    ranks = rng.zipf(zipf, size=(num_samples, f))
    ranks = np.where(ranks > v, rng.integers(1, v + 1, ranks.shape), ranks)
    # ids are a per-field permutation of the popularity ranks
    perms = np.stack([rng.permutation(v) for _ in range(f)])
    ids = perms[np.arange(f), ranks - 1] + v * np.arange(f)
    weights = rng.normal(0, 0.6, f * v)
    latent = rng.normal(0, 0.35, (f * v, 4))
    z = latent[ids]  # (N, F, 4)
    pairwise = 0.5 * (np.square(z.sum(1)).sum(-1) - np.square(z).sum((1, 2)))
    logit = weights[ids].sum(1) + pairwise
    # the shift that gives the positive rate, by bisection
    lo, hi = -50.0, 50.0
    for _ in range(60):
      mid = (lo + hi) / 2
      rate = (1 / (1 + np.exp(-(logit + mid)))).mean()
      lo, hi = (mid, hi) if rate < positive_rate else (lo, mid)
    clicks = rng.random(num_samples) < 1 / (1 + np.exp(-(logit + lo)))
    np.savez(cache, x=ids.astype(np.int32), y=clicks.astype(np.int32))
  d = np.load(cache)
  n = len(d["y"])
  a, b = int(0.8 * n), int(0.9 * n)
  return Dataset(d["x"][:a], d["y"][:a], d["x"][b:], d["y"][b:], 2,
                 d["x"][a:b], d["y"][a:b])


def load(name: str, data_dir: str | None = None,
         num_samples: int = 50_000) -> Dataset:
  if name == "mnist1d":
    return mnist1d(num_samples)
  if name == "digits":
    return digits()
  if name == "python_source":
    return python_source(num_samples)
  if name == "click_log":
    return click_log(num_samples)
  if name == "cifar10":
    if data_dir is None:
      raise ValueError("--data_dir is required for cifar10")
    return cifar10(data_dir)
  raise ValueError(f"unknown dataset {name!r}; choose mnist1d, digits, "
                   "python_source, click_log, cifar10")
