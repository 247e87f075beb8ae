"""AlexNet (Krizhevsky, Sutskever & Hinton 2012, "ImageNet Classification with Deep
Convolutional Neural Networks"), as one `AlexNet` module with two registered layouts.

- `alexnet`: torchvision's single-tower version (64/192/384/256/256 filters, conv1 padded by 2,
  no LRN, an adaptive 6x6 average pool before the classifier, so smaller inputs work too).
- `alexnet_original`: the paper's two-GPU net (Sec. 3.5, Fig. 2): 96/256/384/384/256 filters on a
  227x227 input, conv2/4/5 split into two groups that see only their own GPU's maps
  (`feature_group_count=2`), local response normalization after conv1 and conv2 (Sec. 3.3),
  overlapping 3x3/2 max pooling (Sec. 3.4), and the paper's initialization (Sec. 5).

Module names are the indices of torchvision-style `features` / `classifier` Sequentials (the
parameter-free layers, LRN included, take an index too), so torch state dicts import by name.
Also here: `local_response_norm` (Sec. 3.3).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.registry import register


def local_response_norm(
    x: jax.Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0
) -> jax.Array:
  """Krizhevsky et al. 2012, Sec. 3.3: b_i = a_i / (k + alpha * sum_j a_j^2)^beta over the `size`
  channels centred on i (NHWC, channels last), with the paper's constants as defaults.

  The paper's alpha multiplies the sum; torch.nn.LocalResponseNorm (like Caffe) multiplies the
  mean, so this equals torch's LocalResponseNorm(size, alpha=size * alpha, beta, k).
  """
  window = (1, 1, 1, size)
  pad = ((0, 0), (0, 0), (0, 0), (size // 2, (size - 1) // 2))
  sums = jax.lax.reduce_window(jnp.square(x), 0.0, jax.lax.add, window, (1, 1, 1, 1), pad)
  return x / (k + alpha * sums) ** beta


class AlexNet(layers.Classifier):
  """AlexNet: five convolutions (11x11/4, 5x5, 3x3, 3x3, 3x3), 3x3/2 max pools after conv1, conv2
  and conv5, then dropout-FC-ReLU, dropout-FC-ReLU, FC (Krizhevsky et al. 2012, Sec. 3.5).

  Arguments:
    widths: filters of the five convolutions.
    groups: `feature_group_count` of each convolution (the paper's GPU split: (1, 2, 1, 2, 2)).
    stem_padding: zero padding of conv1 (torchvision 2; the paper 0, with a 227x227 input).
    lrn: local response normalization after the ReLUs of conv1 and conv2 (Sec. 3.3).
    pooled_size: side of the adaptive average pool before the classifier (torchvision: 6), or
      None for none (the input must then give 6x6 maps: 227x227 with stem_padding=0).
    hidden: width of the two hidden fully connected layers.
    dropout_rate: dropout before each hidden FC layer (Sec. 4.2: 0.5; the `dropout` RNG stream).
    act / kernel_init: names in layers.ACTIVATIONS / layers.KERNEL_INITS.
    unit_bias: Sec. 5: biases of conv2, conv4, conv5 and the hidden FC layers start at 1 (the
      ReLUs then get positive inputs early on), the others at 0. Otherwise all biases start at 0.
    pool: a name in layers.POOLS for the three 3x3/2 pools ('max', the paper's; 'max+avg':
      Mishkin et al. 2016's best pooling).
    colour_transform: the hidden width of a learned colour transform at the input
      (layers.ColourTransform: 1x1 convolutions RGB -> 10 -> 3 in Mishkin et al. 2016); 0: none.
    fully_conv: dense evaluation (Sermanet et al. 2013, Sec. 3.5; Simonyan & Zisserman 2015,
      Sec. 3.2): the first FC layer becomes a 6x6 convolution (no adaptive pool), the others 1x1
      convolutions, with the same parameters, and the class score map is averaged over space.
      At the training size (a 6x6 last map) the logits are the usual ones.
  """

  num_classes: int
  dtype: Any = jnp.float32
  widths: Sequence[int] = (64, 192, 384, 256, 256)
  groups: Sequence[int] = (1, 1, 1, 1, 1)
  stem_padding: int = 2
  lrn: bool = False
  pooled_size: int | None = 6
  hidden: int = 4096
  dropout_rate: float = 0.5
  act: str = 'relu'
  kernel_init: str = 'kaiming_in'
  unit_bias: bool = False
  pool: str = 'max'
  colour_transform: int = 0
  fully_conv: bool = False

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    if len(self.widths) != 5 or len(self.groups) != 5:
      raise ValueError(f'AlexNet has 5 convolutions: widths {self.widths}, groups {self.groups}')
    act = layers.get_activation(self.act)
    kinit = layers.get_kernel_init(self.kernel_init)
    pool = layers.get_pool(self.pool)
    if self.colour_transform:
      x = layers.ColourTransform(self.colour_transform, dtype=self.dtype, name='colour')(x)

    # (kernel, stride, padding) of conv1..conv5, Sec. 3.5.
    geometry = [(11, 4, self.stem_padding), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1)]
    index = 0  # position in torchvision's `features` Sequential
    for i, ((kernel, stride, pad), width, groups) in enumerate(
        zip(geometry, self.widths, self.groups)):
      x = nn.Conv(width, (kernel, kernel), strides=(stride, stride), padding=((pad, pad),) * 2,
                  feature_group_count=groups, dtype=self.dtype, param_dtype=jnp.float32,
                  kernel_init=kinit, bias_init=self._bias_init(i in (1, 3, 4)),
                  name=f'features.{index}')(x)
      x = act(x)
      index += 2
      if self.lrn and i < 2:
        x = local_response_norm(x)
        index += 1
      if i in (0, 1, 4):
        # Sec. 3.4: overlapping pooling, z=3 > s=2. Feature maps as timm's VGG: the last map
        # before each pool (the resolution ends there), then the last pool's (`features`' end).
        x = pool(self.stage_end(x), (3, 3), strides=(2, 2))
        index += 1
    return self.stage_end(x)

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    act = layers.get_activation(self.act)
    if self.pooled_size is not None and not self.fully_conv:
      x = layers.adaptive_avg_pool(x, (self.pooled_size, self.pooled_size))
    dense = dict(dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=layers.get_kernel_init(self.kernel_init))
    # classifier: Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear; the first Linear reads
    # the 6x6 map flattened, or slides over a larger one (fully_conv), the others act per pixel.
    x = x if self.fully_conv else layers.flatten_nchw(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = act(layers.FlattenDense(self.hidden, fully_conv=self.fully_conv,
                                window=self.pooled_size or 6, bias_init=self._bias_init(True),
                                name='classifier.1', **dense)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = act(nn.Dense(self.hidden, bias_init=self._bias_init(True), name='classifier.4',
                     **dense)(x))
    if pre_logits:  # the hidden units of the second FC layer (fc7), what classifier.6 reads
      return self._logits(x)
    x = nn.Dense(self.num_classes, bias_init=self._bias_init(False), name='classifier.6',
                 **dense)(x)
    return self._logits(x)

  def _bias_init(self, one: bool) -> layers.Initializer:
    return nn.initializers.ones if one and self.unit_bias else nn.initializers.zeros

  def _logits(self, x: jax.Array) -> jax.Array:
    """Logits [N, classes] (or features [N, D]); a class score map (fully_conv) is averaged
    over space."""
    if x.ndim == 4:
      x = jnp.mean(x, axis=(1, 2))
    return x.astype(layers.output_dtype(self.dtype))


# torchvision's AlexNet (Krizhevsky 2014, "One weird trick", single tower): 224x224 crops.
register('alexnet', AlexNet, input_size=224, num_classes=1000, classifier='classifier.6',
         torch_twin='torchvision alexnet', paper_params=61_100_840)
# Krizhevsky et al. 2012, Sec. 3.5 and Fig. 2: 227x227 input (conv1 11x11/4 unpadded -> 55x55),
# filters 96/256/384/384/256 with conv2/4/5 split over 2 GPUs, LRN, weights N(0, 0.01) (Sec. 5).
# Parameters: the abstract's "60 million", exactly Fig. 2's layers (weights + biases; a grouped
# layer sees half the maps):
#   conv1 96x(11x11x3)+96 = 34,944          conv2 256x(5x5x48)+256 = 307,456
#   conv3 384x(3x3x256)+384 = 885,120       conv4 384x(3x3x192)+384 = 663,936
#   conv5 256x(3x3x192)+256 = 442,624       fc6 (6x6x256)x4096+4096 = 37,752,832
#   fc7 4096x4096+4096 = 16,781,312         fc8 4096x1000+1000 = 4,097,000
register('alexnet_original', AlexNet, input_size=227, num_classes=1000, classifier='classifier.6',
         paper_params=60_965_224, widths=(96, 256, 384, 384, 256), groups=(1, 2, 1, 2, 2),
         stem_padding=0, lrn=True, pooled_size=None, kernel_init='normal_0.01', unit_bias=True)
