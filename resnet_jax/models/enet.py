"""ENet (Paszke, Chaurasia, Kim & Culurciello 2016, "ENet: A Deep Neural Network Architecture for
Real-Time Semantic Segmentation"): the segmentation network of Table 1 as `ENet`, and its encoder
with a classification head, registered as `enet_encoder`.

Table 1, for a 512x512 input: an initial block (Fig. 2a: a 3x3/2 convolution of 13 filters beside
a 2x2/2 max pool of the image, concatenated to 16 maps), stage 1 (a downsampling bottleneck to 64
channels, then 4 regular ones), stage 2 (a downsampling bottleneck to 128, then regular, dilated 2,
asymmetric 5, dilated 4, regular, dilated 8, asymmetric 5, dilated 16), stage 3 (stage 2 without
its downsampling bottleneck), stage 4 (an upsampling bottleneck to 64, then 2 regular), stage 5
(an upsampling bottleneck to 16, then 1 regular) and a full (transposed) convolution to one map
per class at the input's resolution.

A bottleneck (Fig. 2b) is a 1x1 projection that divides the channels by 4 (a 2x2/2 convolution in
a downsampling one), the main convolution (3x3, dilated 3x3, 5x1 then 1x5, or in an upsampling one
a 3x3/2 transposed convolution) and a 1x1 expansion, each followed by BatchNorm and PReLU (Sec. 3);
spatial dropout closes the branch, which is added to the shortcut and passed through a PReLU
(Fig. 2b). The shortcut is the identity, or in a downsampling bottleneck a 2x2/2 max pool whose
extra channels are zeros (Fig. 2b), or in an upsampling one a 1x1 convolution + BN to the new
width, max-unpooled with the indices of the matching downsampling pool (Sec. 3: "max pooling
indices" of the encoder; bottleneck4.0 uses 2.0's, 5.0 uses 1.0's). The expansion's PReLU (as
PyTorch-ENet's) is what brings the count to Table 3's 0.37M: without its 2,720 slopes the net has
0.36M. No convolution has a bias (Sec. 3: they cost a separate kernel call; BatchNorm follows
each convolution anyway).

Max pooling with indices and max-unpooling are plain jax (`max_pool_with_indices`, `max_unpool`):
every pool in ENet is 2x2/2, so the map is reshaped into its non-overlapping windows,
[N, H/2, W/2, C, 4], and the index is the argmax over the 4 (0..3, row-major in the window); the
unpool writes each value where its one-hot index says and reshapes back. No scatter, and the pool's
gradient goes to the argmax alone, as the unpool's goes back from it.

From the authors' Torch code (e-lab ENet-training), where the paper is silent: BatchNorm eps 1e-3,
the 2x2/2 final full convolution. Where the code departs from the paper we follow the paper and
keep the code's choice as an option: PReLU in the decoder too (the code has ReLU:
`decoder_act='relu'`), dropout 0.1 in the decoder ("0.1 afterwards", Sec. 4; the code has none:
`decoder_dropout_rate=0`), no biases (the code keeps them on the main 3x3 and the final
convolution). Training the segmentation net (a per-pixel loss, class weights, its data) is out of
scope of this package; `ENet` is exported, not registered, as the registry's models are classifiers.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.registry import register

# Table 1, bottleneck2.1-2.8 (stage 3 repeats them; 'asymmetric 5' is a 5x1 then a 1x5
# convolution): (dilation, asymmetric kernel size or 0) of each.
STAGE2 = ((1, 0), (2, 0), (1, 5), (4, 0), (1, 0), (8, 0), (1, 5), (16, 0))
INTERNAL_RATIO = 4  # Sec. 3: the 1x1 projection reduces the channels by 4 (Fig. 2b)


def max_pool_with_indices(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """2x2/2 max pool of an NHWC batch (even H and W), and the index of each maximum in its window:
  0..3, row-major (0 top left, 3 bottom right), the first of tied maxima (int32, [N, H/2, W/2, C]).

  The windows don't overlap, so a reshape gathers each one's 4 values on a last axis; the
  maximum is taken at the argmax, so its gradient goes to that one input, the one `max_unpool`
  puts the value back at.
  """
  n, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f'max_pool_with_indices: 2x2/2 windows need even sizes, got {x.shape}')
  windows = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
  windows = windows.reshape(n, h // 2, w // 2, c, 4)
  indices = jnp.argmax(windows, axis=-1).astype(jnp.int32)
  return jnp.take_along_axis(windows, indices[..., None], axis=-1)[..., 0], indices


def max_unpool(x: jax.Array, indices: jax.Array) -> jax.Array:
  """The inverse of `max_pool_with_indices`: an NHWC batch twice as high and wide, zero but at
  each window's `indices` position, which holds the value of `x`."""
  if x.shape != indices.shape:
    raise ValueError(f'max_unpool: values {x.shape} and indices {indices.shape} differ')
  n, h, w, c = x.shape
  windows = jnp.where(indices[..., None] == jnp.arange(4), x[..., None], jnp.zeros((), x.dtype))
  return windows.reshape(n, h, w, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(n, 2 * h, 2 * w, c)


class InitialBlock(nn.Module):
  """Fig. 2a: a 3x3/2 convolution (of `features` minus the input's channels: 13 for RGB) beside a
  2x2/2 max pool of the input, concatenated, then BN and the activation (Sec. 3)."""

  features: int
  conv: Any
  norm: Any
  act: Callable[[jax.Array], jax.Array]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv(self.features - x.shape[-1], (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                  name='conv')(x)
    pooled, _ = max_pool_with_indices(x)
    x = jnp.concatenate([y, pooled.astype(y.dtype)], axis=-1)
    return self.act(self.norm(name='bn')(x))


class Bottleneck(nn.Module):
  """Fig. 2b: a regular, dilated, asymmetric or downsampling bottleneck. Returns (output, the
  shortcut's max-pool indices when `downsample`, else None)."""

  features: int
  conv: Any
  norm: Any
  act: Callable[[jax.Array], jax.Array]
  dropout_rate: float
  downsample: bool = False
  dilation: int = 1
  asymmetric: int = 0  # k: a k x 1 then a 1 x k convolution (Sec. 4, "Factorizing filters")

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array | None]:
    internal = self.features // INTERNAL_RATIO
    # Fig. 2b: in a downsampling bottleneck the first 1x1 projection is a 2x2 convolution, stride 2.
    s = 2 if self.downsample else 1
    y = self.conv(internal, (s, s), strides=(s, s), padding='VALID', name='reduce')(x)
    y = self.act(self.norm(name='reduce_bn')(y))
    if self.asymmetric:
      k = self.asymmetric
      y = self.conv(internal, (k, 1), padding=((k // 2, k // 2), (0, 0)), name='conv_kx1')(y)
      y = self.conv(internal, (1, k), padding=((0, 0), (k // 2, k // 2)), name='conv_1xk')(y)
    else:
      d = self.dilation
      y = self.conv(internal, (3, 3), kernel_dilation=(d, d), padding=((d, d), (d, d)),
                    name='conv')(y)
    y = self.act(self.norm(name='conv_bn')(y))
    y = self.conv(self.features, (1, 1), padding='VALID', name='expand')(y)
    y = self.act(self.norm(name='expand_bn')(y))
    # Sec. 4, "Regularization": spatial dropout (whole maps) at the end of the branch.
    y = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train)(y)
    shortcut, indices = x, None
    if self.downsample:
      shortcut, indices = max_pool_with_indices(x)
    # Fig. 2b: the shortcut's missing channels are zeros.
    shortcut = jnp.pad(shortcut, ((0, 0),) * 3 + ((0, self.features - x.shape[-1]),))
    return self.act(y + shortcut.astype(y.dtype)), indices


class UpsamplingBottleneck(nn.Module):
  """Fig. 2b with a 3x3/2 transposed convolution as the main one; the shortcut is a 1x1
  convolution + BN to `features`, max-unpooled with the matching encoder pool's `indices`."""

  features: int
  conv: Any
  transposed_conv: Any
  norm: Any
  act: Callable[[jax.Array], jax.Array]
  dropout_rate: float

  @nn.compact
  def __call__(self, x: jax.Array, indices: jax.Array, *, train: bool) -> jax.Array:
    internal = self.features // INTERNAL_RATIO
    shortcut = self.conv(self.features, (1, 1), padding='VALID', name='shortcut')(x)
    shortcut = max_unpool(self.norm(name='shortcut_bn')(shortcut), indices)
    y = self.conv(internal, (1, 1), padding='VALID', name='reduce')(x)
    y = self.act(self.norm(name='reduce_bn')(y))
    # torch's ConvTranspose2d(3, stride=2, padding=1, output_padding=1): exactly twice the size.
    y = self.transposed_conv(internal, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)),
                             name='conv')(y)
    y = self.act(self.norm(name='conv_bn')(y))
    y = self.conv(self.features, (1, 1), padding='VALID', name='expand')(y)
    y = self.act(self.norm(name='expand_bn')(y))
    y = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train)(y)
    return self.act(y + shortcut.astype(y.dtype))


def _parts(module: nn.Module, train: bool) -> tuple[Any, Any, Any]:
  """(conv, transposed_conv, norm) partials of an ENet or ENetEncoder: no biases (Sec. 3)."""
  common = dict(use_bias=False, dtype=module.dtype, param_dtype=jnp.float32,
                kernel_init=layers.get_kernel_init(module.kernel_init))
  norm = functools.partial(layers.make_norm, module.norm, train=train, dtype=module.dtype,
                           axis_name=module.bn_axis_name, momentum=module.bn_momentum,
                           epsilon=module.bn_epsilon)
  return (functools.partial(nn.Conv, **common), functools.partial(nn.ConvTranspose, **common),
          norm)


def _encode(module: nn.Module, x: jax.Array, conv: Any, norm: Any, *, train: bool,
            stage_end: Callable[[jax.Array], jax.Array] = lambda x: x
            ) -> tuple[jax.Array, list[jax.Array]]:
  """Table 1's initial block and stages 1-3, made as children of `module` (named as in Table 1):
  (the 1/8-resolution features, the max-pool indices of bottleneck1.0 and 2.0). `stage_end`
  marks the last map at each resolution: the initial block's (1/2), stage 1's (1/4) and stage
  3's (1/8; stage 2 ends at that resolution too)."""
  if x.shape[1] % 8 or x.shape[2] % 8:
    raise ValueError(f'ENet: the input height and width must be multiples of 8, got {x.shape}')
  act = layers.get_activation(module.act)
  initial, width1, width2 = module.widths
  rate1, rate2 = module.dropout_rates
  block = functools.partial(Bottleneck, conv=conv, norm=norm, act=act)
  x = stage_end(InitialBlock(initial, conv, norm, act, name='initial')(x))
  x, indices1 = block(width1, dropout_rate=rate1, downsample=True, name='bottleneck1.0')(
      x, train=train)
  for i in range(1, module.stage1_blocks + 1):
    x, _ = block(width1, dropout_rate=rate1, name=f'bottleneck1.{i}')(x, train=train)
  x = stage_end(x)
  x, indices2 = block(width2, dropout_rate=rate2, downsample=True, name='bottleneck2.0')(
      x, train=train)
  for stage in (2, 3):
    for i, (dilation, asymmetric) in enumerate(module.stage2_layout, start=1):
      x, _ = block(width2, dropout_rate=rate2, dilation=dilation, asymmetric=asymmetric,
                   name=f'bottleneck{stage}.{i}')(x, train=train)
  return stage_end(x), [indices1, indices2]


class ENet(nn.Module):
  """The segmentation network of Table 1: [N, H, W, C] images (H, W multiples of 8) to
  [N, H, W, num_classes] per-pixel class scores.

  Arguments:
    widths: channels of the initial block, stage 1 and stages 2-3 (Table 1: 16, 64, 128); the
      decoder's stages 4 and 5 have the stage-1 and initial widths.
    stage1_blocks: regular bottlenecks after bottleneck1.0 (Table 1: 4).
    stage2_layout: (dilation, asymmetric kernel or 0) of the bottlenecks after 2.0; stage 3
      repeats them (Table 1: `STAGE2`).
    dropout_rates: spatial dropout in stage 1 and in stages 2-3 (Sec. 4: 0.01, then 0.1).
    decoder_dropout_rate: in stages 4-5 (0.1, the paper's "afterwards"; the authors' code: 0).
    act / decoder_act: names in layers.ACTIVATIONS ('prelu' everywhere, Sec. 3; the authors'
      code has 'relu' in the decoder).
    kernel_init: a name in layers.KERNEL_INITS; norm: in layers.NORMS.
    bn_axis_name / bn_momentum / bn_epsilon: BatchNorm settings (flax momentum; eps 1e-3 as the
      authors' code).
  """

  num_classes: int
  dtype: Any = jnp.float32
  widths: Sequence[int] = (16, 64, 128)
  stage1_blocks: int = 4
  stage2_layout: Sequence[tuple[int, int]] = STAGE2
  dropout_rates: Sequence[float] = (0.01, 0.1)
  decoder_dropout_rate: float = 0.1
  act: str = 'prelu'
  decoder_act: str = 'prelu'
  kernel_init: str = 'kaiming'
  norm: str = 'batch'
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv, transposed_conv, norm = _parts(self, train)
    x, (indices1, indices2) = _encode(self, x, conv, norm, train=train)
    act = layers.get_activation(self.decoder_act)
    up = functools.partial(UpsamplingBottleneck, conv=conv, transposed_conv=transposed_conv,
                           norm=norm, act=act, dropout_rate=self.decoder_dropout_rate)
    block = functools.partial(Bottleneck, conv=conv, norm=norm, act=act,
                              dropout_rate=self.decoder_dropout_rate)
    initial, width1, _ = self.widths
    # Table 1: bottleneck4.0 unpools with 2.0's indices, 5.0 with 1.0's; 2 and 1 regular after.
    x = up(width1, name='bottleneck4.0')(x, indices2, train=train)
    for i in (1, 2):
      x, _ = block(width1, name=f'bottleneck4.{i}')(x, train=train)
    x = up(initial, name='bottleneck5.0')(x, indices1, train=train)
    x, _ = block(initial, name='bottleneck5.1')(x, train=train)
    # Table 1 "fullconv": to the classes at the input's size; 2x2/2 as the authors' code.
    x = transposed_conv(self.num_classes, (2, 2), strides=(2, 2), padding='VALID',
                        name='fullconv')(x)
    return x.astype(layers.output_dtype(self.dtype))


class ENetEncoder(layers.Classifier):
  """ENet's encoder (Table 1: the initial block and stages 1-3, at 1/8 of the input's size), a
  global average pool and a dense classifier (`head`): ENet as an image classifier. The
  arguments are `ENet`'s encoder arguments (see there); H and W must be multiples of 8."""

  num_classes: int
  dtype: Any = jnp.float32
  widths: Sequence[int] = (16, 64, 128)
  stage1_blocks: int = 4
  stage2_layout: Sequence[tuple[int, int]] = STAGE2
  dropout_rates: Sequence[float] = (0.01, 0.1)
  act: str = 'prelu'
  kernel_init: str = 'kaiming'
  norm: str = 'batch'
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv, _, norm = _parts(self, train)
    return _encode(self, x, conv, norm, train=train, stage_end=self.stage_end)[0]

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    x = jnp.mean(x, axis=(1, 2))
    if pre_logits:
      return x.astype(layers.output_dtype(self.dtype))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name='head')(x)
    return x.astype(layers.output_dtype(self.dtype))


# Paszke et al. 2016 train the encoder as a classifier of downsampled segmentation maps (Sec. 5),
# not on ImageNet; this is its ImageNet-style form at 224x224, 1000 classes. No source reports a
# parameter count for it.
register('enet_encoder', ENetEncoder, input_size=224, num_classes=1000, classifier='head')
