"""BN-Inception (Ioffe & Szegedy 2015, "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift", Sec. 4.2 and Fig. 5 in the appendix), 224x224 input.

GoogLeNet (Szegedy et al. 2015) changed as Sec. 4.2 and Fig. 5 describe:
- every convolution is followed by BatchNorm and the activation; the convolution has no bias,
  which BN's shift subsumes (Sec. 3.2: z = g(BN(Wu)));
- each 5x5 branch is two stacked 3x3s (the "double 3x3" branch), at the widths of Fig. 5;
- three 28x28 modules (3a, 3b, 3c) instead of two; 3c and 4e reduce the grid themselves (stride-2
  3x3s, no 1x1 branch, and a 3x3/2 max pool passing the input through unprojected), so the
  separate max pools between stages go;
- average or max pooling in the pool branch as the "Pool +proj" column;
- no LocalRespNorm, no dropout (Sec. 4.2.1: "Remove Dropout", "Remove Local Response
  Normalization"); Fig. 5 has no auxiliary classifiers, and neither has this model.

Layout and names follow the released Caffe model as ported to PyTorch by Cadene's
`pretrainedmodels` (`bninception`: `conv1_7x7_s2`, `inception_3a` with `1x1`, `3x3_reduce`, `3x3`,
`double_3x3_reduce`, `double_3x3_1`, `double_3x3_2`, `pool_proj`, and `last_linear`), whose widths
are Fig. 5's. Like that model: pools round up (ceil_mode), the average pools count their zero
padding, BatchNorm eps is 1e-5; unlike it, convolutions have no bias (`conv_bias=True` puts the
Caffe model's redundant biases back). Fig. 5's output column lists 576, 576 and 1024 channels for
4c, 4d and 4e, but their branch widths add up to 608, 608 and 1056, which the Caffe model (and
this one) has.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.registry import register

ModuleDef = Any


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  # Caffe's AVE pooling (3x3/1, pad 1): the zero padding counts in the mean.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)


class BNInceptionModule(nn.Module):
  """An Inception module of Fig. 5: 1x1 | 1x1-3x3 | 1x1-3x3-3x3 | pool-1x1.

  `widths` = (#1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool proj), a row of
  Fig. 5; `pool` is 'avg' or 'max' (the "Pool +proj" column). With `strides=2` (3c, 4e) the
  module reduces the grid: #1x1 and pool proj must be 0 (no 1x1 branch, and the 3x3/2 max pool
  passes the input through), and the last 3x3 of each 3x3 branch has stride 2.
  """

  widths: Sequence[int]
  pool: str
  basic: ModuleDef
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n1x1, n3x3red, n3x3, nd3x3red, nd3x3, pool_proj = self.widths
    s = self.strides
    if s == 2 and (n1x1 or pool_proj or self.pool != 'max'):
      raise ValueError(f'a stride-2 module has no 1x1 branch and a max pass-through, got widths '
                       f'{tuple(self.widths)}, pool {self.pool!r}')
    branches = [self.basic(n1x1, 1, name='1x1')(x)] if n1x1 else []
    b = self.basic(n3x3red, 1, name='3x3_reduce')(x)
    branches.append(self.basic(n3x3, 3, strides=s, padding=1, name='3x3')(b))
    b = self.basic(nd3x3red, 1, name='double_3x3_reduce')(x)
    b = self.basic(nd3x3, 3, padding=1, name='double_3x3_1')(b)
    branches.append(self.basic(nd3x3, 3, strides=s, padding=1, name='double_3x3_2')(b))
    if s == 2:
      # Fig. 5, 3c and 4e: "max + pass through"; as Caffe, 3x3/2 unpadded, rounding up.
      p = layers.max_pool(x, 3, 2, ceil_mode=True)
      if p.shape[1:3] != branches[0].shape[1:3]:
        raise ValueError(f'the stride-2 modules need even grids (224x224 input gives 28 and 14), '
                         f'got {x.shape[1]}x{x.shape[2]}')
      branches.append(p)
    else:
      p = _avg_pool_3x3(x) if self.pool == 'avg' else layers.max_pool(x, 3, 1, padding=1)
      branches.append(self.basic(pool_proj, 1, name='pool_proj')(p))
    return jnp.concatenate(branches, axis=-1)


# Ioffe & Szegedy 2015, Fig. 5: (#1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3,
# pool proj), the pool type and the stride.
FIG5 = {
    '3a': ((64, 64, 64, 64, 96, 32), 'avg', 1),
    '3b': ((64, 64, 96, 64, 96, 64), 'avg', 1),
    '3c': ((0, 128, 160, 64, 96, 0), 'max', 2),
    '4a': ((224, 64, 96, 96, 128, 128), 'avg', 1),
    '4b': ((192, 96, 128, 96, 128, 128), 'avg', 1),
    '4c': ((160, 128, 160, 128, 160, 128), 'avg', 1),
    '4d': ((96, 128, 192, 160, 192, 128), 'avg', 1),
    '4e': ((0, 128, 192, 192, 256, 0), 'max', 2),
    '5a': ((352, 192, 320, 160, 224, 128), 'avg', 1),
    '5b': ((352, 192, 320, 192, 224, 128), 'max', 1),
}


class BNInception(layers.Classifier):
  """BN-Inception (Fig. 5), 224x224 input; the grid is 112, 56, 28, 14 and 7 by stage.

  Arguments:
    dropout_rate: before the classifier; 0 as Sec. 4.2.1 removes dropout (GoogLeNet had 0.4).
    conv_bias: a bias in every convolution, as the released Caffe model (redundant before BN;
      Sec. 3.2 drops it).
    norm: 'batch' (the paper) or 'none' (Sec. 4.2's unnormalized "Inception" baseline, with
      biased convolutions).
    act / kernel_init: names in layers.ACTIVATIONS / KERNEL_INITS (convolutions only; the dense
      layer keeps flax's LeCun normal init).
    bn_axis_name / bn_momentum / bn_epsilon: BatchNorm settings (flax momentum; eps 1e-5 as the
      Caffe model).
  """

  num_classes: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  conv_bias: bool = False
  norm: str = 'batch'
  act: str = 'relu'
  kernel_init: str = 'kaiming'
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=self.conv_bias or self.norm == 'none',
                             dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=layers.get_kernel_init(self.kernel_init))
    norm = functools.partial(layers.make_norm, self.norm, train=train, dtype=self.dtype,
                             axis_name=self.bn_axis_name, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon)
    basic = functools.partial(layers.BasicConv2d, conv=conv, norm=norm,
                              act=layers.get_activation(self.act))

    # Stage ends (no timm twin): the last map at each grid of Fig. 5, 112 (conv1), 56 (conv2),
    # 28 (3b), 14 (4d) and 7 (5b): 64, 192, 320, 608 and 1024 channels.
    # Fig. 5 stem: 7x7/2 64 (112), max pool 3x3/2 (56), 1x1 64 and 3x3 192 ("depth 2"), max pool
    # 3x3/2 (28).
    x = basic(64, 7, strides=2, padding=3, name='conv1_7x7_s2')(x)
    x = layers.max_pool(self.stage_end(x), 3, 2, ceil_mode=True)
    x = basic(64, 1, name='conv2_3x3_reduce')(x)
    x = basic(192, 3, padding=1, name='conv2_3x3')(x)
    x = layers.max_pool(self.stage_end(x), 3, 2, ceil_mode=True)
    for stage in FIG5:
      widths, pool, strides = FIG5[stage]
      if strides == 2:  # 3c and 4e reduce the grid: their input is the last map at its size
        x = self.stage_end(x)
      x = BNInceptionModule(widths, pool, basic, strides, name=f'inception_{stage}')(x)
    return self.stage_end(x)

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    x = jnp.mean(x, axis=(1, 2))  # Fig. 5: avg pool 7x7/1
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    if not pre_logits:
      x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                   name='last_linear')(x)
    return x.astype(layers.output_dtype(self.dtype))


# Ioffe & Szegedy 2015, Sec. 4.2: ImageNet at 224x224, 1000 classes. Sec. 4.2 states 13.6M
# parameters, which Fig. 5's widths do not give, so the count is a port's: Cadene's
# pretrainedmodels `bninception` (the Caffe model at Fig. 5's widths; osmr's imgclsmob reports
# the same) has 11,295,240, with 10,016 convolution biases this model leaves out (Sec. 3.2).
register('bn_inception', BNInception, input_size=224, in_channels=3, num_classes=1000,
         classifier='last_linear', paper_params=11_295_240 - 10_016)
