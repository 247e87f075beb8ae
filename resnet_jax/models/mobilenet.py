"""MobileNet v1 (Howard, Zhu, Chen, Kalenichenko, Wang, Weyand, Andreetto & Adam 2017,
"MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications", Table 1),
with the width multiplier alpha (Sec. 4.2) as the `width` field and any input resolution (the
resolution multiplier rho of Sec. 4.3 is just the input size: the head is a global average pool).

Table 1: conv 3x3/2 32, then 13 depthwise-separable layers (3x3 depthwise + BN + act, 1x1
pointwise + BN + act) to 64, 128 (/2), 128, 256 (/2), 256, 512 (/2), 5 x 512, 1024 (/2), 1024,
global average pool, fully connected. Table 1 prints the last depthwise layer as s2, a known
misprint: its input and output are both 7x7, so it is s1, as in the authors' TF-slim code and timm.

Layout and names follow timm's `mobilenetv1_100` (an EfficientNet-builder model): `conv_stem`,
`bn1`, `blocks.S.B` (`conv_dw`, `bn1`, `conv_pw`, `bn2`; stages S of 1, 2, 2, 6, 2 blocks, the
first block of each stage downsampling), `classifier`. As there: no convolution bias, BatchNorm eps
1e-5, ReLU6 after every BN (TF-slim's; the paper says ReLU), convolutions padded k // 2 on every
side (PyTorch style; TF-slim pads 'SAME', i.e. (0, 1) for stride 2 at even sizes), no shortcuts,
and channel counts `width * c` rounded to a multiple of 8 (never more than 10% down), the stem
included. For the paper's widths 1, 0.75, 0.5, 0.25 the rounding changes nothing.

MobileNet v2 (Sandler, Howard, Zhu, Zhmoginov & Chen 2018, "MobileNetV2: Inverted Residuals and
Linear Bottlenecks", Table 2): a 3x3/2 stem of 32, then 17 inverted residual blocks (1x1
expansion by t + BN + ReLU6, 3x3 depthwise + BN + ReLU6, 1x1 linear projection + BN, with an
identity shortcut where stride and channels allow: Fig. 4d), a 1x1 conv to 1280, global average
pooling and a classifier. Layout and names follow torchvision's `mobilenet_v2` (`features.0`,
`features.N.conv.M`, `features.18`, `classifier.1`), so its state dicts import by name.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.registry import register

# Table 1, as (output channels at width 1, stride) per depthwise-separable layer, grouped into
# timm's stages (a new stage wherever the resolution halves).
STAGES = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2),) + ((512, 1),) * 5,
    ((1024, 2), (1024, 1)),
)
STEM_FEATURES = 32


def round_channels(channels: float, divisor: int = 8) -> int:
  """`channels` to the nearest multiple of `divisor` (at least `divisor`), one step up if that
  loses more than 10%: timm's rounding of width-multiplied channel counts."""
  rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * channels else rounded


def _conv(conv: Any, features: int, kernel: int, strides: int, groups: int, name: str):
  """A k x k convolution padded k // 2 on every side, as PyTorch's (timm's) Conv2d."""
  pad = ((kernel // 2, kernel // 2),) * 2
  return conv(features, (kernel, kernel), strides=(strides, strides), padding=pad,
              feature_group_count=groups, name=name)


class DepthwiseSeparable(nn.Module):
  """3x3 depthwise conv (stride `strides`) + BN + act, 1x1 pointwise conv + BN + act (Fig. 3
  right); timm's DepthwiseSeparableConv without a shortcut."""

  features: int
  strides: int
  conv: Any
  depthwise_conv: Any
  norm: Any
  act: Callable[[jax.Array], jax.Array]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    x = _conv(self.depthwise_conv, channels, 3, self.strides, channels, 'conv_dw')(x)
    x = self.act(self.norm(name='bn1')(x))
    x = _conv(self.conv, self.features, 1, 1, 1, 'conv_pw')(x)
    return self.act(self.norm(name='bn2')(x))


class MobileNetV1(layers.Classifier):
  """MobileNet v1 in timm's `mobilenetv1_100` layout, at any input size.

  Arguments:
    width: the width multiplier alpha (Sec. 4.2), applied to every layer but the classifier.
    dropout_rate: before the classifier (timm's default 0; the paper does not state one).
    act: a name in layers.ACTIVATIONS; 'relu6' as timm and TF-slim (the paper says ReLU).
    bn_axis_name / bn_momentum / bn_epsilon: BatchNorm settings (flax momentum; eps 1e-5 as timm).
  Initialization is timm's for EfficientNet-builder models: N(0, 2 / fan_out) with fan_out =
  k * k * out / groups (for a depthwise kernel that is k * k, i.e. flax's fan_in), and
  U(-1/sqrt(classes), 1/sqrt(classes)) for the classifier.
  """

  num_classes: int
  dtype: Any = jnp.float32
  width: float = 1.0
  dropout_rate: float = 0.0
  act: str = 'relu6'
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    act = layers.get_activation(self.act)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=layers.get_kernel_init('kaiming'))
    depthwise_conv = functools.partial(conv, kernel_init=layers.get_kernel_init('kaiming_in'))
    norm = functools.partial(layers.make_norm, 'batch', train=train, dtype=self.dtype,
                             axis_name=self.bn_axis_name, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon)

    x = _conv(conv, round_channels(STEM_FEATURES * self.width), 3, 2, 1, 'conv_stem')(x)
    x = act(norm(name='bn1')(x))
    # Feature maps as timm's (`blocks.0` .. `blocks.4`): each stage's end, the last map at its
    # resolution; the stem's 32 channels are not one (timm starts at blocks.0, also at 1/2).
    for s, stage in enumerate(STAGES):
      for b, (features, strides) in enumerate(stage):
        x = DepthwiseSeparable(round_channels(features * self.width), strides, conv,
                               depthwise_conv, norm, act, name=f'blocks.{s}.{b}')(x)
      x = self.stage_end(x)
    return x

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    if pre_logits:
      return x.astype(layers.output_dtype(self.dtype))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_out', 'uniform'),
                 name='classifier')(x)
    return x.astype(layers.output_dtype(self.dtype))


# Sandler et al. 2018, Table 2: (expansion t, output channels c, repeats n, first stride s).
V2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))
V2_LAST_FEATURES = 1280


class InvertedResidual(nn.Module):
  """Sandler et al. 2018, Table 1 and Fig. 4d: 1x1 expansion to `expansion` times the input
  channels + BN + act (left out when `expansion` is 1), 3x3 depthwise (stride `strides`) + BN +
  act, 1x1 linear projection + BN (no activation: the linear bottleneck of Sec. 3.2), and an
  identity shortcut when the stride is 1 and the channels stay. Names as torchvision's `conv.M`."""

  features: int
  strides: int
  expansion: int
  conv: Any
  norm: Any
  act: Callable[[jax.Array], jax.Array]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    hidden = channels * self.expansion
    y, m = x, 0
    if self.expansion != 1:
      y = _conv(self.conv, hidden, 1, 1, 1, 'conv.0.0')(y)
      y = self.act(self.norm(name='conv.0.1')(y))
      m = 1
    y = _conv(self.conv, hidden, 3, self.strides, hidden, f'conv.{m}.0')(y)
    y = self.act(self.norm(name=f'conv.{m}.1')(y))
    y = _conv(self.conv, self.features, 1, 1, 1, f'conv.{m + 1}')(y)
    y = self.norm(name=f'conv.{m + 2}')(y)
    return x + y if self.strides == 1 and channels == self.features else y


class MobileNetV2(layers.Classifier):
  """MobileNet v2 in torchvision's `mobilenet_v2` layout, at any input size.

  Arguments:
    width: the width multiplier (Sec. 6.1) of every layer, rounded as `round_channels`
      (torchvision's _make_divisible); the last 1x1 conv keeps 1280 below width 1 (Sec. 6.1: "for
      multipliers less than one, we apply width multiplier to all layers except the very last").
    dropout_rate: before the classifier; 0.2 as torchvision (the paper does not state one).
    act: a name in layers.ACTIVATIONS; 'relu6' as the paper (Sec. 3.4).
    bn_axis_name / bn_momentum / bn_epsilon: BatchNorm settings (flax momentum; eps 1e-5 as
      torchvision).
  Initialization is torchvision's: convolutions Kaiming normal with fan-out (a depthwise kernel's
  fan-out is k * k * channels, as torch counts it), BN at 1 and 0, the classifier N(0, 0.01)
  with zero bias.
  """

  num_classes: int
  dtype: Any = jnp.float32
  width: float = 1.0
  dropout_rate: float = 0.2
  act: str = 'relu6'
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    act = layers.get_activation(self.act)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=layers.get_kernel_init('kaiming'))
    norm = functools.partial(layers.make_norm, 'batch', train=train, dtype=self.dtype,
                             axis_name=self.bn_axis_name, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon)
    x = _conv(conv, round_channels(STEM_FEATURES * self.width), 3, 2, 1, 'features.0.0')(x)
    x = act(norm(name='features.0.1')(x))
    index = 1
    for g, (expansion, channels, repeats, strides) in enumerate(V2_BLOCKS):
      for r in range(repeats):
        x = InvertedResidual(round_channels(channels * self.width), strides if r == 0 else 1,
                             expansion, conv, norm, act, name=f'features.{index}')(x)
        index += 1
      # Feature maps as timm's mobilenetv2_100 (blocks 0, 1, 2, 4, 6: 16, 24, 32, 96, 320
      # channels): the last row of Table 2 at each resolution. The 1x1 conv to 1280 after them
      # is not one, as in timm, though the backbone's output (timm's forward_features) ends there.
      if g == len(V2_BLOCKS) - 1 or V2_BLOCKS[g + 1][3] != 1:
        x = self.stage_end(x)
    last = round_channels(V2_LAST_FEATURES * max(1.0, self.width))
    x = _conv(conv, last, 1, 1, 1, f'features.{index}.0')(x)
    return act(norm(name=f'features.{index}.1')(x))

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    if pre_logits:
      return x.astype(layers.output_dtype(self.dtype))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=nn.initializers.normal(0.01), name='classifier.1')(x)
    return x.astype(layers.output_dtype(self.dtype))


# Howard et al. 2017, Sec. 5: ImageNet at 224x224, 1000 classes; Table 6: widths 1, 0.75, 0.5,
# 0.25 (4.2M, 2.6M, 1.3M, 0.5M parameters). Width 1 is timm's mobilenetv1_100, 4,231,976 of
# them; timm has no twin of the narrower nets (alpha * c is already a multiple of 8 for every
# layer at these widths, so its channel rounding would leave the paper's layout as it is).
_IMAGENET = dict(input_size=224, in_channels=3, num_classes=1000, classifier='classifier')
register('mobilenet_v1', MobileNetV1, **_IMAGENET, torch_twin='timm mobilenetv1_100',
         paper_params=4_231_976)
register('mobilenet_v1_075', MobileNetV1, **_IMAGENET, paper_params=2_600_000, width=0.75)
register('mobilenet_v1_050', MobileNetV1, **_IMAGENET, paper_params=1_300_000, width=0.5)
register('mobilenet_v1_025', MobileNetV1, **_IMAGENET, paper_params=500_000, width=0.25)
# Sandler et al. 2018, Sec. 6.1: ImageNet at 224x224, 1000 classes; Table 4 gives 3.4M parameters,
# torchvision's twin (the same layers) 3,504,872.
register('mobilenet_v2', MobileNetV2, **{**_IMAGENET, 'classifier': 'classifier.1'},
         torch_twin='torchvision mobilenet_v2', paper_params=3_504_872)
