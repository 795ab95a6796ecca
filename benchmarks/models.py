"""Flax NNX models: an MLP, the 1-D CNN for MNIST-1D (convolutions as
im2col matmuls, much faster than lax.conv for these shapes on CPU), a
ResNet-20-style CNN for 32x32 images, two byte-level language models (the
SNGM paper's 2-layer LSTM and a small decoder-only transformer) and a
DeepFM click-through model.

Layers named ``embed`` and ``head`` are a model's input embeddings and
output layer (``benchmarks.train`` keeps them out of Muon's
orthogonalization, as Muon's reference does)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from flax import nnx

import normopt


def _dense(x, kernel, bias, probes):
  """``x @ kernel + bias``; with CLARS norm probes (a State like the layer's
  params) it reports per-example gradient norms (normopt.probed_dense)."""
  if probes is None:
    return x @ kernel + bias
  return normopt.probed_dense(x, kernel[...], bias[...], probes["kernel"][...],
                              probes["bias"][...])


def _linear(layer: nnx.Linear, x, probes):
  return _dense(x, layer.kernel, layer.bias, probes)


def _sub(probes, *keys):
  for key in keys:
    probes = None if probes is None else probes[key]
  return probes


class MLP(nnx.Module):
  supports_probes = True

  def __init__(self, in_features: int, num_classes: int, *, rngs: nnx.Rngs,
               hidden: int = 256):
    self.hidden = nnx.Linear(in_features, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x, probes=None):
    x = x.reshape(x.shape[0], -1)
    h = jax.nn.relu(_linear(self.hidden, x, _sub(probes, "hidden")))
    return _linear(self.out, h, _sub(probes, "out"))


class Conv1D(nnx.Module):
  """A 1-D convolution as patches @ kernel; the kernel is (width*cin, cout)."""

  def __init__(self, cin: int, cout: int, width: int, stride: int, *,
               rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), (width * cin, cout)))
    self.bias = nnx.Param(jnp.zeros((cout,)))
    self.width, self.stride = width, stride

  def __call__(self, x, probes=None):  # x: (B, L, C)
    pad = self.width // 2
    x = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)))
    length = (x.shape[1] - self.width) // self.stride + 1
    idx = (self.stride * jnp.arange(length)[:, None]
           + jnp.arange(self.width)[None, :])
    patches = x[:, idx, :].reshape(x.shape[0], length, -1)
    return _dense(patches, self.kernel, self.bias, probes)


class CNN1D(nnx.Module):
  """3 strided conv layers of 32 channels + dense 128 + dense classes; with
  ``norm``, a LayerNorm after each convolution (a model with normalization
  layers at the same cost; CLARS then takes the exact per-example path, as
  the probes cover dense and conv layers only)."""

  def __init__(self, length: int, num_classes: int, *, rngs: nnx.Rngs,
               channels: int = 32, norm: bool = False):
    self.convs = nnx.List([Conv1D(1, channels, 5, 2, rngs=rngs),
                           Conv1D(channels, channels, 5, 2, rngs=rngs),
                           Conv1D(channels, channels, 5, 2, rngs=rngs)])
    self.norms = nnx.List([nnx.LayerNorm(channels, rngs=rngs)
                           for _ in range(3)]) if norm else None
    self.supports_probes = not norm
    for _ in range(3):
      length = (length + 2 * 2 - 5) // 2 + 1
    self.dense = nnx.Linear(length * channels, 128, rngs=rngs)
    self.out = nnx.Linear(128, num_classes, rngs=rngs)

  def __call__(self, x, probes=None):
    for i, conv in enumerate(self.convs):
      x = conv(x, _sub(probes, "convs", i))
      x = jax.nn.relu(x if self.norms is None else self.norms[i](x))
    x = jax.nn.relu(_linear(self.dense, x.reshape(x.shape[0], -1),
                            _sub(probes, "dense")))
    return _linear(self.out, x, _sub(probes, "out"))


class _Block(nnx.Module):
  def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, rngs=rngs)
    self.norm1 = nnx.LayerNorm(cout, rngs=rngs)
    self.conv2 = nnx.Conv(cout, cout, (3, 3), rngs=rngs)
    self.norm2 = nnx.LayerNorm(cout, rngs=rngs)
    self.proj = (nnx.Conv(cin, cout, (1, 1), strides=stride, rngs=rngs)
                 if stride != 1 or cin != cout else None)

  def __call__(self, x):
    y = jax.nn.relu(self.norm1(self.conv1(x)))
    y = self.norm2(self.conv2(y))
    return jax.nn.relu(y + (self.proj(x) if self.proj is not None else x))


class ResNet20(nnx.Module):
  """ResNet-20 layout (3 stages x 3 blocks, 16/32/64 channels), the SNGM
  paper's CIFAR-10 model; LayerNorm stands in for BatchNorm to keep the
  train step stateless (no running statistics)."""

  def __init__(self, num_classes: int, *, rngs: nnx.Rngs, in_channels: int = 3):
    self.stem = nnx.Conv(in_channels, 16, (3, 3), rngs=rngs)
    blocks, cin = [], 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
      for i in range(3):
        blocks.append(_Block(cin, cout, stride if i == 0 else 1, rngs=rngs))
        cin = cout
    self.blocks = nnx.List(blocks)
    self.out = nnx.Linear(64, num_classes, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.stem(x))
    for block in self.blocks:
      x = block(x)
    return self.out(x.mean(axis=(1, 2)))


class LSTM(nnx.Module):
  """One LSTM layer over a sequence (gates i, f, g, o; forget bias 1),
  scanned over time; the input projection is one matmul for all steps."""

  def __init__(self, cin: int, width: int, *, rngs: nnx.Rngs):
    self.inputs = nnx.Linear(cin, 4 * width, rngs=rngs)
    self.recurrent = nnx.Linear(width, 4 * width, use_bias=False, rngs=rngs,
                                kernel_init=nnx.initializers.orthogonal())
    self.width = width

  def __call__(self, x):  # (B, T, cin) -> (B, T, width)
    projected = self.inputs(x).swapaxes(0, 1)  # (T, B, 4 width)
    kernel = self.recurrent.kernel[...]

    def step(carry, z):
      h, c = carry
      i, f, g, o = jnp.split(z + h @ kernel, 4, axis=-1)
      c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (h, c), h

    zeros = jnp.zeros((x.shape[0], self.width), projected.dtype)
    _, hs = jax.lax.scan(step, (zeros, zeros), projected)
    return hs.swapaxes(0, 1)


class LSTMLanguageModel(nnx.Module):
  """Byte embedding, ``layers`` LSTM layers, a dense head over the bytes
  (the SNGM paper's Table 6 model at CPU scale: width 64, no dropout)."""

  def __init__(self, vocabulary: int, *, rngs: nnx.Rngs, width: int = 64,
               layers: int = 2):
    self.embed = nnx.Embed(vocabulary, width, rngs=rngs)
    self.lstms = nnx.List([LSTM(width, width, rngs=rngs)
                           for _ in range(layers)])
    self.head = nnx.Linear(width, vocabulary, rngs=rngs)

  def __call__(self, tokens):  # (B, T) int -> (B, T, vocabulary)
    x = self.embed(tokens)
    for lstm in self.lstms:
      x = lstm(x)
    return self.head(x)


class _DecoderBlock(nnx.Module):
  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(width, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(
        heads, width, decode=False, rngs=rngs)
    self.norm2 = nnx.LayerNorm(width, rngs=rngs)
    self.up = nnx.Linear(width, 4 * width, rngs=rngs)
    self.down = nnx.Linear(4 * width, width, rngs=rngs)

  def __call__(self, x, mask):
    x = x + self.attention(self.norm1(x), mask=mask)
    return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class TransformerLanguageModel(nnx.Module):
  """A decoder-only (causal, pre-LayerNorm) transformer over bytes with
  learned positions."""

  def __init__(self, vocabulary: int, length: int, *, rngs: nnx.Rngs,
               width: int = 64, layers: int = 2, heads: int = 4):
    self.embed = nnx.Embed(vocabulary, width, rngs=rngs)
    self.positions = nnx.Param(
        nnx.initializers.normal(0.02)(rngs.params(), (length, width)))
    self.blocks = nnx.List([_DecoderBlock(width, heads, rngs=rngs)
                            for _ in range(layers)])
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.head = nnx.Linear(width, vocabulary, rngs=rngs)

  def __call__(self, tokens):  # (B, T) int -> (B, T, vocabulary)
    length = tokens.shape[1]
    x = self.embed(tokens) + self.positions[:length]
    mask = nnx.make_causal_mask(tokens)
    for block in self.blocks:
      x = block(x, mask)
    return self.head(self.norm(x))


class DeepFM(nnx.Module):
  """DeepFM (Guo et al., 2017) on categorical fields whose ids index one
  table: a first-order weight per id, factorization-machine pairwise terms
  of ``factors``-dimensional id embeddings, and an MLP on the concatenated
  embeddings, summed into one click logit. Returns ``(B, 2)`` logits
  ``[0, z]``, so softmax cross-entropy is the logistic loss of ``z``."""

  def __init__(self, fields: int, vocabulary: int, *, rngs: nnx.Rngs,
               factors: int = 8, hidden: tuple[int, ...] = (64, 32)):
    self.embed = nnx.Embed(vocabulary, factors, rngs=rngs,
                           embedding_init=nnx.initializers.normal(0.01))
    self.first_order = nnx.Embed(vocabulary, 1, rngs=rngs,
                                 embedding_init=nnx.initializers.zeros)
    sizes = (fields * factors, *hidden)
    self.mlp = nnx.List([nnx.Linear(a, b, rngs=rngs)
                         for a, b in itertools.pairwise(sizes)])
    self.head = nnx.Linear(sizes[-1], 1, rngs=rngs)

  def __call__(self, ids):  # (B, F) int -> (B, 2)
    v = self.embed(ids)  # (B, F, k)
    pairwise = 0.5 * jnp.sum(jnp.square(v.sum(1)) - jnp.square(v).sum(1), -1)
    h = v.reshape(v.shape[0], -1)
    for layer in self.mlp:
      h = jax.nn.relu(layer(h))
    z = self.first_order(ids)[..., 0].sum(1) + pairwise + self.head(h)[:, 0]
    return jnp.stack([jnp.zeros_like(z), z], -1)


def make(name: str, input_shape: tuple[int, ...], num_classes: int,
         seed: int) -> nnx.Module:
  """The model ``name`` for inputs of ``input_shape`` (one example's) and
  ``num_classes`` outputs (the vocabulary for the language models; the id
  table size comes from :mod:`benchmarks.data` for DeepFM)."""
  rngs = nnx.Rngs(seed)
  if name == "lstm":
    return LSTMLanguageModel(num_classes, rngs=rngs)
  if name == "transformer":
    return TransformerLanguageModel(num_classes, input_shape[0], rngs=rngs)
  if name == "deepfm":
    from benchmarks import data
    return DeepFM(input_shape[0], data.CLICK_FIELDS * data.CLICK_VOCABULARY,
                  rngs=rngs)
  if name == "mlp":
    size = 1
    for s in input_shape:
      size *= s
    return MLP(size, num_classes, rngs=rngs)
  if name == "cnn1d":
    if len(input_shape) != 2:
      raise ValueError(f"cnn1d needs (length, channels) inputs, got {input_shape}")
    return CNN1D(input_shape[0], num_classes, rngs=rngs)
  if name == "cnn1d_ln":
    if len(input_shape) != 2:
      raise ValueError(f"cnn1d_ln needs (length, channels) inputs, got "
                       f"{input_shape}")
    return CNN1D(input_shape[0], num_classes, rngs=rngs, norm=True)
  if name == "resnet20":
    if len(input_shape) != 3:
      raise ValueError(f"resnet20 needs (H, W, C) images, got {input_shape}")
    return ResNet20(num_classes, rngs=rngs, in_channels=input_shape[-1])
  raise ValueError(f"unknown model {name!r}; choose mlp, cnn1d, cnn1d_ln, "
                   "resnet20, lstm, transformer, deepfm")
