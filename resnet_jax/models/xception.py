"""Xception (Chollet 2017, "Xception: Deep Learning with Depthwise Separable Convolutions", Sec. 3,
Fig. 5), 299x299 input.

Entry flow: conv 3x3/2 32, conv 3x3 64 (both unpadded), then three blocks of two separable
convolutions and a max pool 3x3/2 (128, 256, 728 channels) with 1x1/2 projection shortcuts. Middle
flow: eight blocks of three ReLU-separable conv-BN (728) with identity shortcuts. Exit flow: a
block (728, 1024) with max pool and projection, separable 1536 and 2048 (each + BN + ReLU), global
average pool, logistic regression. 22,855,952 parameters at 1000 classes (Table 3).

Layout and names follow timm's `legacy_xception` (the Keras weights, ported): `conv1`/`bn1`,
`conv2`/`bn2`, `block1`..`block12` each with `skip`/`skipbn` and `rep.N` (an nn.Sequential of
ReLU, SeparableConv2d (`conv1` depthwise + `pointwise`), BatchNorm), `conv3`/`bn3`, `conv4`/`bn4`,
`fc`. As there: BatchNorm eps 1e-5, separable convolutions padded 1 on every side, block max pools
3x3/2 padded 1 with -inf (PyTorch's MaxPool2d(3, 2, 1); Keras pads 'same'), no bias on any
convolution, and every depthwise convolution directly followed by its pointwise one (no BN or
ReLU between them, Sec. 4.7).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.registry import register

ModuleDef = Any


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  # nn.MaxPool2d(3, 2, padding=1): -inf padding, floor mode.
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class SeparableConv(nn.Module):
  """A 3x3 depthwise convolution (`conv1`, one filter per channel) then a 1x1 pointwise one
  (`pointwise`), padded 1, no bias: timm's SeparableConv2d."""

  features: int
  conv: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    x = self.conv(channels, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=channels,
                  name='conv1')(x)
    return self.conv(self.features, (1, 1), padding='VALID', name='pointwise')(x)


class Block(nn.Module):
  """`reps` x (ReLU, separable conv, BN), a max pool 3x3/2 when `strides` is 2, plus a shortcut:
  the identity, or a 1x1 conv (stride `strides`) + BN when the shape changes (Fig. 5).

  `grow_first`: the first separable conv widens to `features` (entry flow); otherwise the last
  does (exit flow's first block). `start_with_relu=False` drops the leading ReLU (block1, whose
  input is already activated); the shortcut always reads the block's input before any ReLU.
  """

  features: int
  reps: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  act: Any
  start_with_relu: bool = True
  grow_first: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    # Index into timm's nn.Sequential `rep` of (ReLU, SeparableConv2d, BatchNorm2d) triples.
    offset = 1 if self.start_with_relu else 0
    y = x
    for i in range(self.reps):
      if self.grow_first:
        out = self.features
      else:
        out = in_features if i < self.reps - 1 else self.features
      if i > 0 or self.start_with_relu:
        y = self.act(y)
      y = SeparableConv(out, self.conv, name=f'rep.{3 * i + offset}')(y)
      y = self.norm(name=f'rep.{3 * i + offset + 1}')(y)
    if self.strides != 1:
      y = max_pool_3x3_s2(y)
    if self.features != in_features or self.strides != 1:
      s = (self.strides, self.strides)
      x = self.conv(self.features, (1, 1), strides=s, padding='VALID', name='skip')(x)
      x = self.norm(name='skipbn')(x)
    return y + x


class Xception(layers.Classifier):
  """Xception in timm's `legacy_xception` layout (299x299). The head is a global average pool, so
  smaller inputs work too (Keras asks for 71x71 or more; the convolutions run from 7x7 up).

  Arguments:
    middle_blocks: repeats of the middle flow (8 in Fig. 5); blocks are numbered on from block4,
      so the exit flow's first block is `block{4 + middle_blocks}`.
    dropout_rate: before the classifier (Sec. 4.3: 0.5 for the ImageNet runs; timm uses 0).
    act / kernel_init: names in layers.ACTIVATIONS / KERNEL_INITS (convolutions; the classifier
      draws as PyTorch's nn.Linear). 'kaiming' (fan_out) is timm's init for every convolution.
    bn_axis_name / bn_momentum / bn_epsilon: BatchNorm settings (flax momentum; eps 1e-5 as timm).
  """

  num_classes: int
  dtype: Any = jnp.float32
  middle_blocks: int = 8
  dropout_rate: float = 0.0
  act: str = 'relu'
  kernel_init: str = 'kaiming'
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    act = layers.get_activation(self.act)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=layers.get_kernel_init(self.kernel_init))
    norm = functools.partial(layers.make_norm, 'batch', train=train, dtype=self.dtype,
                             axis_name=self.bn_axis_name, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon)
    block = functools.partial(Block, conv=conv, norm=norm, act=act)

    # Feature maps where timm's legacy_xception takes them: `act2`, the ReLUs that open block2,
    # block3 and the exit flow's block (`blockN.rep.0`), and `act4`. Those three are the
    # preceding block's output after a ReLU (the last map at its resolution, activated); the
    # blocks' shortcuts read it before the ReLU, so the net goes on with `x` itself.
    # Entry flow (Fig. 5): 299 -> 149 -> 147, then blocks to 74, 37, 19.
    x = conv(32, (3, 3), strides=(2, 2), padding='VALID', name='conv1')(x)
    x = act(norm(name='bn1')(x))
    x = conv(64, (3, 3), padding='VALID', name='conv2')(x)
    x = self.stage_end(act(norm(name='bn2')(x)))
    x = block(128, 2, 2, start_with_relu=False, name='block1')(x)
    self.stage_end(act(x))
    x = block(256, 2, 2, name='block2')(x)
    self.stage_end(act(x))
    x = block(728, 2, 2, name='block3')(x)
    # Middle flow: 19x19x728, repeated eight times.
    for i in range(self.middle_blocks):
      x = block(728, 3, 1, name=f'block{4 + i}')(x)
    self.stage_end(act(x))
    # Exit flow: 19 -> 10, then separable 1536 and 2048, each + BN + ReLU.
    x = block(1024, 2, 2, grow_first=False, name=f'block{4 + self.middle_blocks}')(x)
    x = act(norm(name='bn3')(SeparableConv(1536, conv, name='conv3')(x)))
    x = act(norm(name='bn4')(SeparableConv(2048, conv, name='conv4')(x)))
    return self.stage_end(x)

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    if pre_logits:
      return x.astype(layers.output_dtype(self.dtype))
    # PyTorch's nn.Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights.
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
                 name='fc')(x)
    return x.astype(layers.output_dtype(self.dtype))


# Chollet 2017, Sec. 4.1: ImageNet at 299x299, 1000 classes; Table 3: 22,855,952 parameters (and
# timm's legacy_xception, whose module names ours are).
register('xception', Xception, input_size=299, in_channels=3, num_classes=1000, classifier='fc',
         torch_twin='timm legacy_xception', paper_params=22_855_952)
