"""Inception-v3 (Szegedy, Vanhoucke, Ioffe, Shlens & Wojna 2016, "Rethinking the Inception
Architecture for Computer Vision", Sec. 6, Table 1), 299x299 input.

Layout and names follow torchvision's `Inception3` (`Conv2d_1a_3x3.conv`, `Mixed_5b.branch1x1.bn`,
`AuxLogits.conv0.conv`, `fc`), so its state dicts import by name. That is the released model
(TF-slim's, ported), which differs in details from Table 1: the 35x35 modules keep a 5x5 branch
beside the stacked 3x3s, and the stem's last layers are 1x1 80, 3x3 192, max pool 3x3/2 (Table 1:
3x3 80, 3x3/2 192, 3x3 288). Every convolution is conv (no bias) + BatchNorm (eps 0.001) + act.

Modules (torchvision's class names): InceptionA, the 35x35 modules (Fig. 5); InceptionB and
InceptionD, the grid reductions to 17x17 and 8x8 (Fig. 10); InceptionC, the 17x17 modules with
factorized 7x7s (Fig. 6); InceptionE, the 8x8 modules with expanded filter banks (Fig. 7).
"""
from __future__ import annotations

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.registry import register

ModuleDef = Any


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  # F.avg_pool2d(x, 3, stride=1, padding=1): the zero padding counts in the mean, as in PyTorch.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class InceptionA(nn.Module):
  """35x35 module (Fig. 5): 1x1 64 | 1x1 48, 5x5 64 | 1x1 64, 3x3 96, 3x3 96 | pool, 1x1."""

  pool_features: int
  basic: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = self.basic
    b1 = conv(64, 1, name='branch1x1')(x)
    b5 = conv(48, 1, name='branch5x5_1')(x)
    b5 = conv(64, 5, padding=2, name='branch5x5_2')(b5)
    b3 = conv(64, 1, name='branch3x3dbl_1')(x)
    b3 = conv(96, 3, padding=1, name='branch3x3dbl_2')(b3)
    b3 = conv(96, 3, padding=1, name='branch3x3dbl_3')(b3)
    bp = conv(self.pool_features, 1, name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """35x35 -> 17x17 reduction (Fig. 10): 3x3/2 384 | 1x1 64, 3x3 96, 3x3/2 96 | max pool 3x3/2."""

  basic: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = self.basic
    b3 = conv(384, 3, strides=2, name='branch3x3')(x)
    bd = conv(64, 1, name='branch3x3dbl_1')(x)
    bd = conv(96, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = conv(96, 3, strides=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """17x17 module with 7x7s factorized into 1x7 and 7x1 (Fig. 6, n=7); `channels_7x7` is the
  width inside the factorized branches (128, 160, 160, 192 in Mixed_6b..6e)."""

  channels_7x7: int
  basic: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv, c7 = self.basic, self.channels_7x7
    b1 = conv(192, 1, name='branch1x1')(x)
    b7 = conv(c7, 1, name='branch7x7_1')(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = conv(c7, 1, name='branch7x7dbl_1')(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = conv(192, 1, name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """17x17 -> 8x8 reduction (Fig. 10): 1x1 192, 3x3/2 320 | 1x1 192, 1x7, 7x1, 3x3/2 192 | max
  pool 3x3/2."""

  basic: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = self.basic
    b3 = conv(192, 1, name='branch3x3_1')(x)
    b3 = conv(320, 3, strides=2, name='branch3x3_2')(b3)
    b7 = conv(192, 1, name='branch7x7x3_1')(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = conv(192, 3, strides=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """8x8 module with expanded filter banks (Fig. 7): the 3x3s are split into parallel 1x3 and 3x1
  whose outputs are concatenated (2048 channels out)."""

  basic: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = self.basic
    b1 = conv(320, 1, name='branch1x1')(x)
    b3 = conv(384, 1, name='branch3x3_1')(x)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
                          conv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], axis=-1)
    bd = conv(448, 1, name='branch3x3dbl_1')(x)
    bd = conv(384, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
                          conv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)], axis=-1)
    bp = conv(192, 1, name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(nn.Module):
  """Auxiliary classifier on the 17x17 grid (Sec. 4, Fig. 8): avg pool 5x5/3, 1x1 128, 5x5 768
  (both conv + BN + act), global average, fc. Needs a 17x17 grid, i.e. a 299x299 input."""

  num_classes: int
  basic: ModuleDef
  dense: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if min(x.shape[1:3]) < 17:
      raise ValueError(f'the Inception-v3 auxiliary head needs a 17x17 grid (a 299x299 input), '
                       f'got {x.shape[1]}x{x.shape[2]}; use aux_logits=False at this size')
    x = nn.avg_pool(x, (5, 5), strides=(3, 3), padding='VALID')
    x = self.basic(128, 1, name='conv0')(x)
    x = self.basic(768, 5, name='conv1')(x)
    x = jnp.mean(x, axis=(1, 2))
    return self.dense(self.num_classes, name='fc')(x)


class InceptionV3(layers.AuxClassifier):
  """Inception-v3 in torchvision's layout (299x299; the main path takes down to 75x75).

  `__call__(x, train=..., part=...)` follows layers.Classifier's `part` protocol ('features': the
  stem and Mixed modules up to Mixed_7c's map; 'head' / 'pre_logits': that map to the logits / to
  the pooled, dropped-out features `fc` reads); it is its own because training with the
  auxiliary head returns two arrays, from the whole net ('logits') only.

  Arguments:
    aux_logits: build the auxiliary classifier on Mixed_6e. With it, `train=True` returns
      `(logits, aux)`; inference returns the logits alone. Add `AUX_WEIGHT * aux_loss` to the loss
      in the training loop. The head needs the full 299x299 input (a 17x17 grid). With
      num_classes=0 (no classifier) there is no auxiliary classifier either.
    dropout_rate: before the classifier; 0.5 as torchvision.
    act / kernel_init: names in layers.ACTIVATIONS / KERNEL_INITS (convolutions only; the dense
      layers keep flax's LeCun normal init). torchvision draws from N(0, 0.1), which BN makes
      equivalent to any scale for the convolutions.
    bn_axis_name / bn_momentum / bn_epsilon: BatchNorm settings (flax momentum; eps 0.001 as
      torchvision and TF-slim).
  """

  num_classes: int
  dtype: Any = jnp.float32
  aux_logits: bool = False
  dropout_rate: float = 0.5
  act: str = 'relu'
  kernel_init: str = 'kaiming'
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3

  # Not stated in the paper; 0.4 is the auxiliary loss weight of the authors' TF-slim trainer.
  AUX_WEIGHT: ClassVar[float] = 0.4

  def _dense(self) -> ModuleDef:
    return functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)

  def trunk(self, x: jax.Array, *, train: bool,
            run_aux: bool) -> tuple[jax.Array, tuple[jax.Array | None]]:
    """The stem and the Mixed modules up to Mixed_7c's map, and the auxiliary head's logits
    (None unless `run_aux`)."""
    act = layers.get_activation(self.act)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=layers.get_kernel_init(self.kernel_init))
    norm = functools.partial(layers.make_norm, 'batch', train=train, dtype=self.dtype,
                             axis_name=self.bn_axis_name, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon)
    basic = functools.partial(layers.BasicConv2d, conv=conv, norm=norm, act=act)

    # Stage ends as timm's feature_info: Conv2d_2b_3x3 (147), Conv2d_4a_3x3 (71), Mixed_5d (35),
    # Mixed_6e (17) and Mixed_7c (8): what enters each stride-2 step after the first, and the
    # last map.
    # Stem (Table 1): 299 -> 149 -> 147 -> 147 -> pool 73 -> 73 -> 71 -> pool 35.
    x = basic(32, 3, strides=2, name='Conv2d_1a_3x3')(x)
    x = basic(32, 3, name='Conv2d_2a_3x3')(x)
    x = basic(64, 3, padding=1, name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_s2(self.stage_end(x))
    x = basic(80, 1, name='Conv2d_3b_1x1')(x)
    x = basic(192, 3, name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_s2(self.stage_end(x))
    x = InceptionA(32, basic, name='Mixed_5b')(x)
    x = InceptionA(64, basic, name='Mixed_5c')(x)
    x = InceptionA(64, basic, name='Mixed_5d')(x)
    x = InceptionB(basic, name='Mixed_6a')(self.stage_end(x))
    x = InceptionC(128, basic, name='Mixed_6b')(x)
    x = InceptionC(160, basic, name='Mixed_6c')(x)
    x = InceptionC(160, basic, name='Mixed_6d')(x)
    x = self.stage_end(InceptionC(192, basic, name='Mixed_6e')(x))
    aux = None
    if run_aux:
      aux = InceptionAux(self.num_classes, basic, self._dense(), name='AuxLogits')(x)
    x = InceptionD(basic, name='Mixed_7a')(x)
    x = InceptionE(basic, name='Mixed_7b')(x)
    x = InceptionE(basic, name='Mixed_7c')(x)
    return self.stage_end(x), (aux,)

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    if not pre_logits:
      x = self._dense()(self.num_classes, name='fc')(x)
    return x.astype(layers.output_dtype(self.dtype))


# Szegedy et al. 2016, Sec. 6: ImageNet at 299x299, 1000 classes. The count is torchvision's
# inception_v3(aux_logits=False); with the auxiliary head it is 27,161,264.
register('inception_v3', InceptionV3, input_size=299, in_channels=3, num_classes=1000,
         classifier='fc', torch_twin='torchvision inception_v3', paper_params=23_834_568)
