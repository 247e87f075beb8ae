"""Inception-v4, Inception-ResNet-v1 and -v2 (Szegedy, Ioffe, Vanhoucke & Alemi 2016, "Inception-v4,
Inception-ResNet and the Impact of Residual Connections on Learning"), 299x299 input.

Layouts and names follow timm's `inception_v4` (`features.N`, `last_linear`) and
`inception_resnet_v2` (`conv2d_1a`, `mixed_5b`, `repeat.N`, `block8`, `conv2d_7b`, `classif`), so
their state dicts import by name. Both are the released TF-slim models, ported. Every convolution
is conv (no bias) + BatchNorm (eps 0.001) + act, except the residual 1x1 projections (bias, no BN).

- Inception-v4 (Sec. 3.1, Fig. 9) is as the paper draws it: stem (Fig. 3), 4 Inception-A (Fig. 4),
  Reduction-A (Fig. 7, k, l, m, n = 192, 224, 256, 384, Table 1), 7 Inception-B (Fig. 5),
  Reduction-B (Fig. 8), 3 Inception-C (Fig. 6).
- Inception-ResNet-v2 (Sec. 3.2, Figs. 15-19) as released differs from the paper: an Inception-v3
  style stem plus a 35x35 Inception module (`mixed_5b`, 320 channels) instead of Fig. 3, hence
  residual widths 320 / 1088 / 2080 instead of 384 / 1154 / 2048, and 10 / 20 / 10 residual
  blocks instead of Fig. 15's 5 / 10 / 5. Reduction-A is Fig. 7 with k, l, m, n = 256, 256, 384,
  384. Residual branches are scaled by 0.17 / 0.10 / 0.20 before the addition (Sec. 3.3,
  Fig. 20); the last 8x8 block (`block8`) has scale 1 and no activation.
- Inception-ResNet-v1 (Sec. 3.2, Fig. 15) has no released model and is as the paper draws it:
  stem (Fig. 14), 5 Inception-ResNet-A (Fig. 10), Reduction-A (Fig. 7, k, l, m, n = 192, 192,
  256, 384, Table 1), 10 Inception-ResNet-B (Fig. 11), Reduction-B (Fig. 12), 5
  Inception-ResNet-C (Fig. 13). It shares v2's blocks at its own widths, and its names follow
  v2's (`conv2d_4b` ends the stem; `repeat`, `mixed_6a`, `repeat_1`, `mixed_7a`, `repeat_2`).

All max pools and strided convolutions are unpadded ('V' in the figures); the 3x3 average pools
pad by 1 and average over the real pixels only (count_include_pad=False, as timm).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.registry import register

ModuleDef = Any


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  # timm's AvgPool2d(3, 1, padding=1, count_include_pad=False): borders average real pixels only.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


# ----------------------------------------------------------------------------------------------
# Inception-v4 modules (timm's class names).


class Mixed3a(nn.Module):
  """Stem, first split (Fig. 3): max pool 3x3/2 | 3x3/2 96, both unpadded (64 -> 160 channels)."""

  basic: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([_max_pool_3x3_s2(x), self.basic(96, 3, strides=2, name='conv')(x)], -1)


class Mixed4a(nn.Module):
  """Stem, second split (Fig. 3): 1x1 64, 3x3 96 | 1x1 64, 1x7 64, 7x1 64, 3x3 96 (-> 192)."""

  basic: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = self.basic
    b0 = conv(64, 1, name='branch0.0')(x)
    b0 = conv(96, 3, name='branch0.1')(b0)
    b1 = conv(64, 1, name='branch1.0')(x)
    b1 = conv(64, (1, 7), padding=(0, 3), name='branch1.1')(b1)
    b1 = conv(64, (7, 1), padding=(3, 0), name='branch1.2')(b1)
    b1 = conv(96, 3, name='branch1.3')(b1)
    return jnp.concatenate([b0, b1], axis=-1)


class Mixed5a(nn.Module):
  """Stem, last split (Fig. 3): 3x3/2 192 | max pool 3x3/2 (192 -> 384 channels)."""

  basic: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([self.basic(192, 3, strides=2, name='conv')(x), _max_pool_3x3_s2(x)], -1)


class InceptionA(nn.Module):
  """35x35 module (Fig. 4): 1x1 96 | 1x1 64, 3x3 96 | 1x1 64, 3x3 96, 3x3 96 | avg pool, 1x1 96."""

  basic: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = self.basic
    b0 = conv(96, 1, name='branch0')(x)
    b1 = conv(64, 1, name='branch1.0')(x)
    b1 = conv(96, 3, padding=1, name='branch1.1')(b1)
    b2 = conv(64, 1, name='branch2.0')(x)
    b2 = conv(96, 3, padding=1, name='branch2.1')(b2)
    b2 = conv(96, 3, padding=1, name='branch2.2')(b2)
    b3 = conv(96, 1, name='branch3.1')(_avg_pool_3x3(x))  # branch3.0 is the pool
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class ReductionA(nn.Module):
  """35x35 -> 17x17 reduction (Fig. 7): 3x3/2 n | 1x1 k, 3x3 l, 3x3/2 m | max pool 3x3/2.

  `widths` = (k, l, m, n), a row of Table 1: (192, 224, 256, 384) in Inception-v4, (256, 256, 384,
  384) in Inception-ResNet-v2 (timm's `mixed_6a`; same names).
  """

  widths: Sequence[int]
  basic: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, l_, m, n = self.widths  # Table 1's letters
    conv = self.basic
    b0 = conv(n, 3, strides=2, name='branch0')(x)
    b1 = conv(k, 1, name='branch1.0')(x)
    b1 = conv(l_, 3, padding=1, name='branch1.1')(b1)
    b1 = conv(m, 3, strides=2, name='branch1.2')(b1)
    return jnp.concatenate([b0, b1, _max_pool_3x3_s2(x)], axis=-1)


class InceptionB(nn.Module):
  """17x17 module (Fig. 5): 1x1 384 | 1x1 192, 1x7 224, 7x1 256 | 1x1 192, 7x1 192, 1x7 224,
  7x1 224, 1x7 256 | avg pool, 1x1 128 (the factor order is the released model's)."""

  basic: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = self.basic
    b0 = conv(384, 1, name='branch0')(x)
    b1 = conv(192, 1, name='branch1.0')(x)
    b1 = conv(224, (1, 7), padding=(0, 3), name='branch1.1')(b1)
    b1 = conv(256, (7, 1), padding=(3, 0), name='branch1.2')(b1)
    b2 = conv(192, 1, name='branch2.0')(x)
    b2 = conv(192, (7, 1), padding=(3, 0), name='branch2.1')(b2)
    b2 = conv(224, (1, 7), padding=(0, 3), name='branch2.2')(b2)
    b2 = conv(224, (7, 1), padding=(3, 0), name='branch2.3')(b2)
    b2 = conv(256, (1, 7), padding=(0, 3), name='branch2.4')(b2)
    b3 = conv(128, 1, name='branch3.1')(_avg_pool_3x3(x))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class ReductionB(nn.Module):
  """17x17 -> 8x8 reduction (Fig. 8): 1x1 192, 3x3/2 192 | 1x1 256, 1x7 256, 7x1 320, 3x3/2 320 |
  max pool 3x3/2."""

  basic: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = self.basic
    b0 = conv(192, 1, name='branch0.0')(x)
    b0 = conv(192, 3, strides=2, name='branch0.1')(b0)
    b1 = conv(256, 1, name='branch1.0')(x)
    b1 = conv(256, (1, 7), padding=(0, 3), name='branch1.1')(b1)
    b1 = conv(320, (7, 1), padding=(3, 0), name='branch1.2')(b1)
    b1 = conv(320, 3, strides=2, name='branch1.3')(b1)
    return jnp.concatenate([b0, b1, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """8x8 module (Fig. 6): 1x1 256 | 1x1 384, (1x3 256 | 3x1 256) | 1x1 384, 3x1 448, 1x3 512,
  (1x3 256 | 3x1 256) | avg pool, 1x1 256 (1536 channels out)."""

  basic: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = self.basic
    b0 = conv(256, 1, name='branch0')(x)
    b1 = conv(384, 1, name='branch1_0')(x)
    b1 = jnp.concatenate([conv(256, (1, 3), padding=(0, 1), name='branch1_1a')(b1),
                          conv(256, (3, 1), padding=(1, 0), name='branch1_1b')(b1)], axis=-1)
    b2 = conv(384, 1, name='branch2_0')(x)
    b2 = conv(448, (3, 1), padding=(1, 0), name='branch2_1')(b2)
    b2 = conv(512, (1, 3), padding=(0, 1), name='branch2_2')(b2)
    b2 = jnp.concatenate([conv(256, (1, 3), padding=(0, 1), name='branch2_3a')(b2),
                          conv(256, (3, 1), padding=(1, 0), name='branch2_3b')(b2)], axis=-1)
    b3 = conv(256, 1, name='branch3.1')(_avg_pool_3x3(x))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


def _conv_and_norm(module: nn.Module, train: bool) -> tuple[ModuleDef, ModuleDef]:
  """The conv (no bias) and BatchNorm partials a network binds from its fields."""
  conv = functools.partial(nn.Conv, use_bias=False, dtype=module.dtype, param_dtype=jnp.float32,
                           kernel_init=layers.get_kernel_init(module.kernel_init))
  norm = functools.partial(layers.make_norm, 'batch', train=train, dtype=module.dtype,
                           axis_name=module.bn_axis_name, momentum=module.bn_momentum,
                           epsilon=module.bn_epsilon)
  return conv, norm


def _residual_parts(module: nn.Module, train: bool) -> tuple[ModuleDef, dict]:
  """An Inception-ResNet's conv + BN + act partial and the keyword arguments of its residual
  blocks (the branch convolutions, the linear 1x1 projection with bias, the activation)."""
  act = layers.get_activation(module.act)
  conv, norm = _conv_and_norm(module, train)
  basic = functools.partial(layers.BasicConv2d, conv=conv, norm=norm, act=act)
  return basic, dict(basic=basic, linear_conv=functools.partial(conv, use_bias=True), act=act)


def _stem_start(x: jax.Array, basic: ModuleDef, stage_end: Callable[[jax.Array], jax.Array]
                ) -> jax.Array:
  """What the Inception-ResNet stems share (v1's Fig. 14, v2's released stem): 299 -> 149 ->
  147 -> 147 (64) -> pool 73 -> 73 (80) -> 71 (192). Its stage ends are timm's for v2:
  conv2d_2b (147) and conv2d_4a (71), the maps entering its two stride-2 steps."""
  x = basic(32, 3, strides=2, name='conv2d_1a')(x)
  x = basic(32, 3, name='conv2d_2a')(x)
  x = basic(64, 3, padding=1, name='conv2d_2b')(x)
  x = _max_pool_3x3_s2(stage_end(x))
  x = basic(80, 1, name='conv2d_3b')(x)
  return stage_end(basic(192, 3, name='conv2d_4a')(x))


def _head(module: nn.Module, x: jax.Array, train: bool, pre_logits: bool,
          name: str) -> jax.Array:
  """Global average pool, dropout, fully connected layer (left out with `pre_logits`); float32
  logits (or pooled features)."""
  x = jnp.mean(x, axis=(1, 2))
  x = nn.Dropout(module.dropout_rate, deterministic=not train)(x)
  if not pre_logits:
    x = nn.Dense(module.num_classes, dtype=module.dtype, param_dtype=jnp.float32, name=name)(x)
  return x.astype(layers.output_dtype(module.dtype))


class InceptionV4(layers.Classifier):
  """Inception-v4 (Fig. 9) in timm's layout: everything up to the head is `features.N`.

  The spatial path takes inputs down to 75x75 (a 1x1 grid after Reduction-B); the head is a
  global average, so any size from 75 up gives num_classes logits.

  Arguments:
    stage_sizes: numbers of Inception-A, -B and -C modules; (4, 7, 3) in Fig. 9. They shift the
      `features.N` indices, so only the default imports timm's weights.
    dropout_rate: before the classifier; Fig. 9 keeps 0.8 (timm's default is 0, which only
      matters in training).
    act / kernel_init: names in layers.ACTIVATIONS / KERNEL_INITS (convolutions only; the dense
      layer keeps flax's LeCun normal init).
    bn_axis_name / bn_momentum / bn_epsilon: BatchNorm settings (flax momentum; eps 0.001 as
      TF-slim and timm).
  """

  num_classes: int
  dtype: Any = jnp.float32
  stage_sizes: Sequence[int] = (4, 7, 3)
  dropout_rate: float = 0.2
  act: str = 'relu'
  kernel_init: str = 'kaiming'
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    if len(self.stage_sizes) != 3:
      raise ValueError(f'stage_sizes needs 3 entries (A, B, C modules), got {self.stage_sizes}')
    conv, norm = _conv_and_norm(self, train)
    basic = functools.partial(layers.BasicConv2d, conv=conv, norm=norm,
                              act=layers.get_activation(self.act))
    num_a, num_b, num_c = self.stage_sizes
    # timm's nn.Sequential order; each entry becomes `features.{its index}`.
    features = [
        functools.partial(basic, 32, 3, strides=2),  # Fig. 3: 299 -> 149
        functools.partial(basic, 32, 3),  # 147
        functools.partial(basic, 64, 3, padding=1),  # 147
        functools.partial(Mixed3a, basic),  # 73
        functools.partial(Mixed4a, basic),  # 71
        functools.partial(Mixed5a, basic),  # 35
        *[functools.partial(InceptionA, basic)] * num_a,
        functools.partial(ReductionA, (192, 224, 256, 384), basic),  # Table 1 -> 17
        *[functools.partial(InceptionB, basic)] * num_b,
        functools.partial(ReductionB, basic),  # 8
        *[functools.partial(InceptionC, basic)] * num_c,
    ]
    # Stage ends as timm's feature_info: features.2 (147), features.3 (Mixed3a, 73), the last
    # Inception-A (35), the last Inception-B (17) and the last Inception-C (8).
    ends = {2, 3, 5 + num_a, 6 + num_a + num_b, len(features) - 1}
    for i, layer in enumerate(features):
      x = layer(name=f'features.{i}')(x)
      if i in ends:
        x = self.stage_end(x)
    return x

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    return _head(self, x, train, pre_logits, 'last_linear')


# ----------------------------------------------------------------------------------------------
# Inception-ResNet-v2 modules (timm's class names).


class Mixed5b(nn.Module):
  """35x35 Inception module closing the released stem (Inception-v3's Fig. 5 widths): 1x1 96 |
  1x1 48, 5x5 64 | 1x1 64, 3x3 96, 3x3 96 | avg pool, 1x1 64 (192 -> 320 channels)."""

  basic: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = self.basic
    b0 = conv(96, 1, name='branch0')(x)
    b1 = conv(48, 1, name='branch1.0')(x)
    b1 = conv(64, 5, padding=2, name='branch1.1')(b1)
    b2 = conv(64, 1, name='branch2.0')(x)
    b2 = conv(96, 3, padding=1, name='branch2.1')(b2)
    b2 = conv(96, 3, padding=1, name='branch2.2')(b2)
    b3 = conv(64, 1, name='branch3.1')(_avg_pool_3x3(x))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class _ResidualBlock(nn.Module):
  """Fields every Inception-ResNet block shares, and the residual merge (Fig. 20)."""

  basic: ModuleDef
  linear_conv: ModuleDef
  act: Callable[[jax.Array], jax.Array]
  scale: float = 1.0
  final_act: bool = True

  def _merge(self, x: jax.Array, branches: Sequence[jax.Array]) -> jax.Array:
    # Figs. 16-19: a linear 1x1 (bias, no BN) restores the input width for the addition.
    y = self.linear_conv(x.shape[-1], (1, 1), name='conv2d')(jnp.concatenate(branches, axis=-1))
    # Sec. 3.3: scaling the residual down before the addition keeps training stable.
    x = x + self.scale * y
    return self.act(x) if self.final_act else x


# Branch widths of the residual blocks and of Reduction-B, in the order the docstrings list them.
V1_WIDTHS = {'a': (32, 32, 32, 32, 32, 32), 'b': (128, 128, 128, 128), 'c': (192, 192, 192, 192),
             'reduction_b': (256, 384, 256, 256, 256, 256, 256)}  # Figs. 10, 11, 13, 12
V2_WIDTHS = {'a': (32, 32, 32, 32, 48, 64), 'b': (192, 128, 160, 192), 'c': (192, 192, 224, 256),
             'reduction_b': (256, 384, 256, 288, 256, 288, 320)}  # Figs. 16, 17, 19, 18


class Block35(_ResidualBlock):
  """35x35 Inception-ResNet-A: 1x1 w0 | 1x1 w1, 3x3 w2 | 1x1 w3, 3x3 w4, 3x3 w5; `widths`
  (w0..w5) is (32, 32, 32, 32, 48, 64) in v2 (Fig. 16), all 32 in v1 (Fig. 10)."""

  widths: Sequence[int] = V2_WIDTHS['a']

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv, w = self.basic, self.widths
    b0 = conv(w[0], 1, name='branch0')(x)
    b1 = conv(w[1], 1, name='branch1.0')(x)
    b1 = conv(w[2], 3, padding=1, name='branch1.1')(b1)
    b2 = conv(w[3], 1, name='branch2.0')(x)
    b2 = conv(w[4], 3, padding=1, name='branch2.1')(b2)
    b2 = conv(w[5], 3, padding=1, name='branch2.2')(b2)
    return self._merge(x, [b0, b1, b2])


class Block17(_ResidualBlock):
  """17x17 Inception-ResNet-B: 1x1 w0 | 1x1 w1, 1x7 w2, 7x1 w3; `widths` is (192, 128, 160, 192)
  in v2 (Fig. 17), all 128 in v1 (Fig. 11)."""

  widths: Sequence[int] = V2_WIDTHS['b']

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv, w = self.basic, self.widths
    b0 = conv(w[0], 1, name='branch0')(x)
    b1 = conv(w[1], 1, name='branch1.0')(x)
    b1 = conv(w[2], (1, 7), padding=(0, 3), name='branch1.1')(b1)
    b1 = conv(w[3], (7, 1), padding=(3, 0), name='branch1.2')(b1)
    return self._merge(x, [b0, b1])


class Block8(_ResidualBlock):
  """8x8 Inception-ResNet-C: 1x1 w0 | 1x1 w1, 1x3 w2, 3x1 w3; `widths` is (192, 192, 224, 256)
  in v2 (Fig. 19), all 192 in v1 (Fig. 13)."""

  widths: Sequence[int] = V2_WIDTHS['c']

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv, w = self.basic, self.widths
    b0 = conv(w[0], 1, name='branch0')(x)
    b1 = conv(w[1], 1, name='branch1.0')(x)
    b1 = conv(w[2], (1, 3), padding=(0, 1), name='branch1.1')(b1)
    b1 = conv(w[3], (3, 1), padding=(1, 0), name='branch1.2')(b1)
    return self._merge(x, [b0, b1])


class Mixed7a(nn.Module):
  """17x17 -> 8x8 Reduction-B of the Inception-ResNets: 1x1 w0, 3x3/2 w1 | 1x1 w2, 3x3/2 w3 |
  1x1 w4, 3x3 w5, 3x3/2 w6 | max pool 3x3/2. `widths` is (256, 384, 256, 288, 256, 288, 320) in
  v2 (Fig. 18: 1088 -> 2080 channels), (256, 384, 256, 256, 256, 256, 256) in v1 (Fig. 12:
  896 -> 1792)."""

  basic: ModuleDef
  widths: Sequence[int] = V2_WIDTHS['reduction_b']

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv, w = self.basic, self.widths
    b0 = conv(w[0], 1, name='branch0.0')(x)
    b0 = conv(w[1], 3, strides=2, name='branch0.1')(b0)
    b1 = conv(w[2], 1, name='branch1.0')(x)
    b1 = conv(w[3], 3, strides=2, name='branch1.1')(b1)
    b2 = conv(w[4], 1, name='branch2.0')(x)
    b2 = conv(w[5], 3, padding=1, name='branch2.1')(b2)
    b2 = conv(w[6], 3, strides=2, name='branch2.2')(b2)
    return jnp.concatenate([b0, b1, b2, _max_pool_3x3_s2(x)], axis=-1)


class InceptionResNetV2(layers.Classifier):
  """Inception-ResNet-v2 (Fig. 15) as released, in timm's layout (see the module docstring).

  Takes inputs down to 75x75 (a 1x1 grid after `mixed_7a`); the head is a global average.

  Arguments:
    stage_sizes: numbers of 35x35, 17x17 and 8x8 residual blocks, (10, 20, 10) as released
      (`repeat`, `repeat_1`, then `repeat_2` plus the final `block8`); Fig. 15 draws 5 / 10 / 5.
    residual_scales: factors on the residual branches of the three stages (Sec. 3.3: 0.1 to 0.3;
      0.17 / 0.10 / 0.20 as released). The final `block8` always has scale 1 and no activation.
    dropout_rate: before the classifier; Fig. 15 keeps 0.8 (timm's default is 0, which only
      matters in training).
    act / kernel_init / bn_*: as InceptionV4; `act` also follows each residual addition.
  """

  num_classes: int
  dtype: Any = jnp.float32
  stage_sizes: Sequence[int] = (10, 20, 10)
  residual_scales: Sequence[float] = (0.17, 0.10, 0.20)
  dropout_rate: float = 0.2
  act: str = 'relu'
  kernel_init: str = 'kaiming'
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    if len(self.stage_sizes) != 3 or self.stage_sizes[2] < 1:
      raise ValueError(f'stage_sizes needs 3 entries, the last >= 1, got {self.stage_sizes}')
    basic, residual = _residual_parts(self, train)
    scale_a, scale_b, scale_c = self.residual_scales
    num_a, num_b, num_c = self.stage_sizes

    # Stage ends as timm's feature_info: conv2d_2b (147) and conv2d_4a (71) in stem_start,
    # `repeat` (35), `repeat_1` (17) and conv2d_7b (8).
    # Released stem (Inception-v3's): 299 -> ... -> 71 (stem_start) -> pool 35.
    x = _max_pool_3x3_s2(_stem_start(x, basic, self.stage_end))
    x = Mixed5b(basic, name='mixed_5b')(x)
    w = V2_WIDTHS
    for i in range(num_a):
      x = Block35(scale=scale_a, widths=w['a'], name=f'repeat.{i}', **residual)(x)
    # Reduction-A at Table 1's widths -> 17x17.
    x = ReductionA((256, 256, 384, 384), basic, name='mixed_6a')(self.stage_end(x))
    for i in range(num_b):
      x = Block17(scale=scale_b, widths=w['b'], name=f'repeat_1.{i}', **residual)(x)
    x = Mixed7a(basic, w['reduction_b'], name='mixed_7a')(self.stage_end(x))  # -> 8x8
    for i in range(num_c - 1):
      x = Block8(scale=scale_c, widths=w['c'], name=f'repeat_2.{i}', **residual)(x)
    # The last block feeds conv2d_7b unscaled and unactivated, as the released model.
    x = Block8(scale=1.0, final_act=False, widths=w['c'], name='block8', **residual)(x)
    return self.stage_end(basic(1536, 1, name='conv2d_7b')(x))

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    return _head(self, x, train, pre_logits, 'classif')


class InceptionResNetV1(layers.Classifier):
  """Inception-ResNet-v1 (Fig. 15), as the paper draws it (see the module docstring); 299x299
  input, grids 149, 147, 73, 71, 35 in the stem, then 35, 17 and 8 by stage (256, 896 and 1792
  channels). Like v2 it takes inputs down to 75x75 (a 1x1 grid after Reduction-B).

  Arguments:
    stage_sizes: numbers of Inception-ResNet-A, -B and -C blocks; (5, 10, 5) in Fig. 15.
    residual_scales: factors on the residual branches of the three stages. Sec. 3.3 scales by
      0.1 to 0.3 without saying which per net; 0.17 / 0.10 / 0.20 are the authors' released v2
      values (and those of the TF-slim v1 ports), within that range. Every block, the last
      included, is scaled and followed by the activation (Figs. 10, 11, 13).
    dropout_rate: before the classifier; 0.2, Fig. 15's keep probability 0.8.
    act / kernel_init / bn_*: as InceptionResNetV2.
  """

  num_classes: int
  dtype: Any = jnp.float32
  stage_sizes: Sequence[int] = (5, 10, 5)
  residual_scales: Sequence[float] = (0.17, 0.10, 0.20)
  dropout_rate: float = 0.2
  act: str = 'relu'
  kernel_init: str = 'kaiming'
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    if len(self.stage_sizes) != 3:
      raise ValueError(f'stage_sizes needs 3 entries (A, B, C blocks), got {self.stage_sizes}')
    basic, residual = _residual_parts(self, train)
    scale_a, scale_b, scale_c = self.residual_scales
    num_a, num_b, num_c = self.stage_sizes
    w = V1_WIDTHS

    # Stage ends (no timm twin) where v2's are: conv2d_2b (147, 64 channels) and conv2d_4a (71,
    # 192) in stem_start, `repeat` (35, 256), `repeat_1` (17, 896) and `repeat_2` (8, 1792; v1
    # has no conv2d_7b).
    # Fig. 14 stem: 299 -> ... -> 71 (stem_start) -> 35 (256 channels).
    x = basic(256, 3, strides=2, name='conv2d_4b')(_stem_start(x, basic, self.stage_end))
    for i in range(num_a):
      x = Block35(scale=scale_a, widths=w['a'], name=f'repeat.{i}', **residual)(x)
    # Reduction-A at Table 1's widths -> 17x17, 896 channels.
    x = ReductionA((192, 192, 256, 384), basic, name='mixed_6a')(self.stage_end(x))
    for i in range(num_b):
      x = Block17(scale=scale_b, widths=w['b'], name=f'repeat_1.{i}', **residual)(x)
    x = Mixed7a(basic, w['reduction_b'], name='mixed_7a')(self.stage_end(x))  # Fig. 12 -> 8x8, 1792
    for i in range(num_c):
      x = Block8(scale=scale_c, widths=w['c'], name=f'repeat_2.{i}', **residual)(x)
    return self.stage_end(x)

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    return _head(self, x, train, pre_logits, 'classif')


# Szegedy et al. 2016, Figs. 9 and 15: 299x299x3 inputs; ImageNet's 1000 classes. The classifier
# names and the counts are timm's.
register('inception_v4', InceptionV4, input_size=299, in_channels=3, num_classes=1000,
         classifier='last_linear', torch_twin='timm inception_v4', paper_params=42_679_816)
register('inception_resnet_v2', InceptionResNetV2, input_size=299, in_channels=3, num_classes=1000,
         classifier='classif', torch_twin='timm inception_resnet_v2', paper_params=55_843_464)
# The paper gives no count for v1, and no reference implementation has Fig. 15 as drawn (the
# TF-slim ports of FaceNet add a sixth, unactivated 8x8 block and an embedding head), hence None;
# tests/test_zoo_bn_inception.py checks the count against the figures' arithmetic.
register('inception_resnet_v1', InceptionResNetV1, input_size=299, in_channels=3, num_classes=1000,
         classifier='classif', paper_params=None)
