"""SqueezeNet (Iandola, Han, Moskewicz, Ashraf, Dally & Keutzer 2016, "SqueezeNet: AlexNet-level
accuracy with 50x fewer parameters and <0.5MB model size"), versions 1.0 and 1.1, as one
`SqueezeNet` module in torchvision's layout and names.

A fire module (Sec. 3.2) squeezes with 1x1 convolutions, then expands with 1x1 and 3x3
convolutions whose outputs are concatenated; every convolution is followed by ReLU. The net is a
stem convolution, 3x3/2 max pools with ceil rounding (Caffe's, kept by torchvision) between
groups of fire modules, then dropout, a 1x1 convolution to the classes, ReLU and a global
average pool (Sec. 3.3: no fully connected layers).

- `squeezenet1_0`: Table 1: 96 7x7/2 stem, pools after the stem, fire4 and fire8.
- `squeezenet1_1`: the authors' v1.1 release (about 2.4x less computation, same accuracy):
  64 3x3/2 stem, pools moved earlier (after the stem, fire3 and fire5).

Also here: `max_pool`, PyTorch's MaxPool2d (padding, ceil_mode) on NHWC.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.registry import register


class Fire(nn.Module):
  """Fire module (Iandola et al. 2016, Sec. 3.2, Fig. 1): 1x1 squeeze, then 1x1 and 3x3 expand
  concatenated (1x1 first, as torchvision), each convolution followed by the activation."""

  squeeze: int
  expand: int
  conv: Any
  act: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.act(self.conv(self.squeeze, (1, 1), name='squeeze')(x))
    e1 = self.act(self.conv(self.expand, (1, 1), name='expand1x1')(x))
    # Sec. 3.2: 1 pixel of zero padding keeps the 3x3 expand output the size of the 1x1's.
    e3 = self.act(self.conv(self.expand, (3, 3), padding=((1, 1), (1, 1)), name='expand3x3')(x))
    return jnp.concatenate([e1, e3], axis=-1)


class SqueezeNet(layers.Classifier):
  """SqueezeNet: stem conv + ReLU + max pool, fire modules with max pools between some of them,
  dropout, 1x1 conv classifier + ReLU, global average pool.

  Arguments:
    stem_width / stem_kernel: the stride-2, unpadded first convolution.
    fires: `(squeeze, expand)` filters of each fire module (each expand branch has `expand`).
    pool_before: indices into `fires` of the modules preceded by a 3x3/2 ceil-mode max pool (one
      always follows the stem).
    dropout_rate: before the classifier convolution (Sec. 5: 0.5 after fire9).
    act / kernel_init: names in layers.ACTIVATIONS / KERNEL_INITS; the classifier convolution is
      N(0, 0.01), as in torchvision (its other convolutions are Kaiming-uniform, fan_in).
  """

  num_classes: int
  dtype: Any = jnp.float32
  stem_width: int = 96
  stem_kernel: int = 7
  fires: Sequence[tuple[int, int]] = ((16, 64), (16, 64), (32, 128), (32, 128), (48, 192),
                                      (48, 192), (64, 256), (64, 256))
  pool_before: Sequence[int] = (3, 7)
  dropout_rate: float = 0.5
  act: str = 'relu'
  kernel_init: str = 'kaiming_in'

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    act = layers.get_activation(self.act)
    k = self.stem_kernel
    x = act(self._conv(self.stem_width, (k, k), strides=(2, 2), padding='VALID',
                       name='features.0')(x))
    # Feature maps as timm's VGG: the last map before each pool (the stem's, then the fire
    # module's before it), then torchvision's `features` output (the last fire module's).
    x = layers.max_pool(self.stage_end(x), 3, 2, ceil_mode=True)
    index = 3  # position in torchvision's `features` Sequential: conv, ReLU, pool, fires...
    for i, (squeeze, expand) in enumerate(self.fires):
      if i in self.pool_before:
        x = layers.max_pool(self.stage_end(x), 3, 2, ceil_mode=True)
        index += 1
      x = Fire(squeeze, expand, conv=self._conv, act=act, name=f'features.{index}')(x)
      index += 1
    return self.stage_end(x)

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    # classifier: Dropout, Conv2d 1x1, ReLU, AdaptiveAvgPool2d(1); pre_logits: the average of
    # the (dropped out) maps the 1x1 convolution reads, without it.
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    if not pre_logits:
      act = layers.get_activation(self.act)
      x = act(self._conv(self.num_classes, (1, 1), kernel_init='normal_0.01',
                         name='classifier.1')(x))
    if x.shape[1] == 0 or x.shape[2] == 0:
      raise ValueError(f'SqueezeNet: empty class maps {x.shape}; the input is too small')
    x = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d((1, 1))
    return x.astype(layers.output_dtype(self.dtype))

  @nn.nowrap  # Fire calls it: the convolutions it makes belong to the Fire module
  def _conv(self, features: int, kernel: tuple[int, int], *, kernel_init: str | None = None,
            **kwargs: Any) -> nn.Conv:
    return nn.Conv(features, kernel, dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=layers.get_kernel_init(kernel_init or self.kernel_init), **kwargs)


# Iandola et al. 2016, Table 1: 224x224 ImageNet crops; squeeze/expand filters of fire2..fire9;
# 1,248,424 parameters (torchvision's too). The classifier is conv10, a 1x1 convolution to one
# map per class, averaged into the logits (torchvision's classifier.1).
register('squeezenet1_0', SqueezeNet, input_size=224, num_classes=1000, classifier='classifier.1',
         torch_twin='torchvision squeezenet1_0', paper_params=1_248_424)
# SqueezeNet v1.1 (the authors' release notes): 3x3 stem of 64 filters, pools before fire4, fire6.
# The count is torchvision's.
register('squeezenet1_1', SqueezeNet, input_size=224, num_classes=1000, classifier='classifier.1',
         torch_twin='torchvision squeezenet1_1', paper_params=1_235_496, stem_width=64,
         stem_kernel=3, pool_before=(2, 4))
