"""OverFeat (Sermanet, Eigen, Zhang, Mathieu, Fergus & LeCun 2013, "OverFeat: Integrated
Recognition, Localization and Detection using Convolutional Networks"), its two classification
nets as one `OverFeat` module:

- `overfeat_fast`: Table 1, on 231x231 inputs: five convolutions (96 11x11/4, 256 5x5, 512, 1024,
  1024 3x3 padded by 1) with 2x2/2 max pools after layers 1, 2 and 5, then fully connected layers
  of 3072, 4096 and 1000 units.
- `overfeat_accurate`: Table 3, on 221x221 inputs: six convolutions (96 7x7/2, 256 7x7, 512, 512,
  1024, 1024 3x3 padded by 1) with max pools 3x3/3, 2x2/2 and 3x3/3 after layers 1, 2 and 6, then
  4096, 4096 and 1000 units.

Both use ReLU after every layer but the last, dropout 0.5 before the two hidden fully connected
layers (Sec. 3.1: "DropOut with a rate of 0.5 in the fully connected layers (6th and 7th)") and
weights drawn from N(0, 0.01^2) (Sec. 3.1). Layers are named by the paper's numbering (`conv1`,
..., `fc8` or `fc9`).

`fully_conv=True` is the paper's dense evaluation (Sec. 3.3 and 3.5): the first fully connected
layer runs as a convolution over the last feature map with its own weights (6x6 in the fast net,
5x5 in the accurate one), the others as 1x1 convolutions, so a larger image gives a map of class
scores, averaged here over space (Mishkin et al. 2016, "Systematic evaluation of CNN advances on
the ImageNet": FC layers as convolutions, predictions averaged). The paper takes the spatial max
per class instead and adds the offset max pooling of Sec. 3.3 (not reproduced: one offset).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.registry import register


class OverFeat(layers.Classifier):
  """OverFeat: convolution (+ max pool) layers, then fully connected layers (Sermanet et al.
  2013, Sec. 3.1, Tables 1 and 3).

  Arguments:
    convs: per convolution layer (filters, kernel, stride, zero padding, pool), the pool a
      pool x pool max pool of stride pool, or 0 for none (the columns of Tables 1 and 3).
    hidden: units of the hidden fully connected layers (fast: 3072, 4096; accurate: 4096, 4096).
    fc_window: side of the last feature map at the training input (fast: 6 at 231, accurate: 5
      at 221): the kernel of the first fully connected layer when it runs as a convolution.
    dropout_rate: dropout before each hidden fully connected layer (Sec. 3.1: 0.5; the `dropout`
      RNG stream).
    act / kernel_init: names in layers.ACTIVATIONS / layers.KERNEL_INITS; biases start at 0.
    fully_conv: dense evaluation (Sec. 3.5): the fully connected layers as convolutions with the
      same parameters, the class score map averaged over space. At the training size the map is
      1x1 and the logits are the usual ones.
  """

  num_classes: int
  dtype: Any = jnp.float32
  convs: Sequence[tuple[int, int, int, int, int]] = ()
  hidden: Sequence[int] = (3072, 4096)
  fc_window: int = 6
  dropout_rate: float = 0.5
  act: str = 'relu'
  kernel_init: str = 'normal_0.01'
  fully_conv: bool = False

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    if not self.convs or not self.hidden:
      raise ValueError(f'OverFeat needs convolutions and hidden layers: convs {self.convs}, '
                       f'hidden {self.hidden}')
    act = layers.get_activation(self.act)
    common = self._common()
    for i, (filters, kernel, stride, pad, pool) in enumerate(self.convs, start=1):
      x = act(nn.Conv(filters, (kernel, kernel), strides=(stride, stride),
                      padding=((pad, pad), (pad, pad)), name=f'conv{i}', **common)(x))
      if pool:  # Tables 1 and 3: non-overlapping max pooling (pool size = stride)
        # Feature maps as timm's VGG: each pooled layer's output before its pool, then the
        # last map (what the first FC layer reads).
        x = nn.max_pool(self.stage_end(x), (pool, pool), strides=(pool, pool))
    return self.stage_end(x)

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    act = layers.get_activation(self.act)
    common = self._common()
    # Sec. 3.5: the first FC layer is a convolution over the whole last map, the rest 1x1.
    layer = len(self.convs) + 1
    for i, units in enumerate(self.hidden):
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      if i == 0:
        x = layers.FlattenDense(units, fully_conv=self.fully_conv, window=self.fc_window,
                                name=f'fc{layer}', **common)(x)
      else:
        x = nn.Dense(units, name=f'fc{layer}', **common)(x)
      x = act(x)
      layer += 1
    if pre_logits:  # the last hidden layer's units (fc7 / fc8), what the classifier reads
      return self._logits(x)
    x = nn.Dense(self.num_classes, name=f'fc{layer}', **common)(x)
    return self._logits(x)

  def _common(self) -> dict[str, Any]:
    return dict(dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=layers.get_kernel_init(self.kernel_init))

  def _logits(self, x: jax.Array) -> jax.Array:
    """Logits [N, classes] (or features [N, D]); with fully_conv the map is averaged over space
    (Mishkin et al. 2016)."""
    if x.ndim == 4:
      x = jnp.mean(x, axis=(1, 2))
    return x.astype(layers.output_dtype(self.dtype))


# Table 1 (fast): (filters, kernel, stride, padding, pool) of layers 1-5.
FAST = ((96, 11, 4, 0, 2), (256, 5, 1, 0, 2), (512, 3, 1, 1, 0), (1024, 3, 1, 1, 0),
        (1024, 3, 1, 1, 2))
# Table 3 (accurate): layers 1-6.
ACCURATE = ((96, 7, 2, 0, 3), (256, 7, 1, 0, 2), (512, 3, 1, 1, 0), (512, 3, 1, 1, 0),
            (1024, 3, 1, 1, 0), (1024, 3, 1, 1, 3))

# Table 4 gives 145M parameters for the fast net and 144M for the accurate one, truncated (not
# rounded) millions; the exact counts of Tables 1 and 3 (weights + biases) are declared:
#   fast: conv1 96x(11x11x3)+96 = 34,944      conv2 256x(5x5x96)+256 = 614,656
#         conv3 512x(3x3x256)+512 = 1,180,160  conv4 1024x(3x3x512)+1024 = 4,719,616
#         conv5 1024x(3x3x1024)+1024 = 9,438,208  fc6 (6x6x1024)x3072+3072 = 113,249,280
#         fc7 3072x4096+4096 = 12,587,008     fc8 4096x1000+1000 = 4,097,000
#   accurate: conv1 96x(7x7x3)+96 = 14,208    conv2 256x(7x7x96)+256 = 1,204,480
#         conv3 1,180,160   conv4 512x(3x3x512)+512 = 2,359,808   conv5 4,719,616
#         conv6 9,438,208   fc7 (5x5x1024)x4096+4096 = 104,861,696   fc8 16,781,312   fc9 4,097,000
register('overfeat_fast', OverFeat, input_size=231, num_classes=1000, classifier='fc8',
         paper_params=145_920_872, convs=FAST, hidden=(3072, 4096), fc_window=6)
register('overfeat_accurate', OverFeat, input_size=221, num_classes=1000, classifier='fc9',
         paper_params=144_656_488, convs=ACCURATE, hidden=(4096, 4096), fc_window=5)
