"""Network In Network (Lin, Chen & Yan 2014, "Network In Network"), as one `NiN` module.

An mlpconv layer (Sec. 3.1, Eq. 2) is a k x k convolution followed by two 1x1 convolutions (the
"cascaded cross channel parametric pooling" of Sec. 3.2, hence the names cccp1/cccp2), each with
ReLU. The last mlpconv outputs one map per class and global average pooling (Sec. 3.2) turns them
into the logits: no fully connected layers.

- `nin`: the ImageNet-sized net of Dive into Deep Learning (Zhang et al., Sec. 8.3): mlpconv
  layers 96@11x11/4, 256@5x5, 384@3x3 and classes@3x3 with 3x3/2 max pools between them and
  dropout 0.5 before the last; 224x224 input.
- `cifar_nin`: the paper's CIFAR-10 net (Sec. 4.2): three mlpconv layers 192-160-96 (5x5),
  192-192-192 (5x5), 192-192-10 (3x3), each but the last followed by a 3x3/2 max pool and
  dropout 0.5. The pools round up as Caffe's do (the authors' release), so 32 -> 16 -> 8: the
  paper's "downsamples the input image by a factor of two". (The released model also makes the
  second pool an average pool; we follow the text, which says max pooling.)
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.registry import register

# (kernel, stride, padding, (conv, cccp1, cccp2) widths); None stands for num_classes.
BlockSpec = tuple[int, int, int, tuple[int | None, int | None, int | None]]


class NiN(layers.Classifier):
  """Network In Network: mlpconv blocks, 3x3/2 max pools between them, global average pool.

  Arguments:
    blocks: `(kernel, stride, padding, widths)` of each mlpconv layer; a width None is
      `num_classes` (the last 1x1 convolution must give one map per class).
    dropout_blocks: indices of the blocks whose pooled output goes through dropout.
    dropout_rate: Sec. 3.2 / 4.2: 0.5 (the `dropout` RNG stream).
    pool_ceil_mode: round the pools' output size up (Caffe) instead of down.
    act / kernel_init: names in layers.ACTIVATIONS / KERNEL_INITS.

  The head (`classify`) is the last block from its first layer with one map per class on, and
  the global average pool: only cccp2 in `cifar_nin`, but the whole last block in `nin` (with
  the dropout before it), whose 384 input maps are then the pooled features (num_classes=0,
  forward_head(pre_logits=True)). Without classes no class-wide layer is made.
  """

  blocks: Sequence[BlockSpec]
  num_classes: int
  dtype: Any = jnp.float32
  dropout_blocks: Sequence[int] = ()
  dropout_rate: float = 0.5
  pool_ceil_mode: bool = False
  act: str = 'relu'
  kernel_init: str = 'kaiming_in'

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.blocks[-1][-1][-1] is not None:
      raise ValueError('the last 1x1 convolution gives one map per class: its width must be None')
    last = len(self.blocks) - 1
    for i in range(last):
      x = self._mlpconv(x, i, range(3))
      # Feature maps as timm's VGG: each block's output before its pool, then the backbone's.
      x = layers.max_pool(self.stage_end(x), 3, 2, ceil_mode=self.pool_ceil_mode)
      if i in self.dropout_blocks and not (i == last - 1 and self._head_start() == 0):
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return self.stage_end(self._mlpconv(x, last, range(self._head_start())))

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    last = len(self.blocks) - 1
    start = self._head_start()
    if start == 0 and last - 1 in self.dropout_blocks:  # the dropout before the class block
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    if not pre_logits:
      x = self._mlpconv(x, last, range(start, 3))
      if last in self.dropout_blocks:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    if x.shape[1] == 0 or x.shape[2] == 0:
      raise ValueError(f'NiN: empty class maps {x.shape}; the input is too small')
    # Sec. 3.2: global average pooling of the class maps gives the logits (with pre_logits, of
    # the maps the class layers read).
    x = jnp.mean(x, axis=(1, 2))
    return x.astype(layers.output_dtype(self.dtype))

  def _head_start(self) -> int:
    """The first layer of the last block with a width of None (one map per class): it and the
    layers after it are the head, made only when there are classes (the whole last block in
    `nin`, only cccp2 in `cifar_nin`)."""
    return self.blocks[-1][-1].index(None)

  def _mlpconv(self, x: jax.Array, i: int, which: range) -> jax.Array:
    """The layers `which` (0: the k x k convolution, 1: cccp1, 2: cccp2) of mlpconv block i."""
    act = layers.get_activation(self.act)
    conv = dict(dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=layers.get_kernel_init(self.kernel_init))
    kernel, stride, pad, widths = self.blocks[i]
    name = f'mlpconv{i + 1}'
    for j in which:
      width = self.num_classes if widths[j] is None else widths[j]
      if j == 0:
        x = nn.Conv(width, (kernel, kernel), strides=(stride, stride),
                    padding=((pad, pad), (pad, pad)), name=f'{name}.conv', **conv)(x)
      else:
        x = nn.Conv(width, (1, 1), name=f'{name}.cccp{j}', **conv)(x)
      x = act(x)
    return x


# Zhang et al., Dive into Deep Learning, Sec. 8.3: AlexNet-like geometry, 224x224 ImageNet. NiN
# has no dense classifier: the last mlpconv's last 1x1 convolution gives one map per class, and
# the global average pool makes them the logits (Lin et al. 2014, Sec. 3.2). Neither text gives
# a parameter count.
register('nin', NiN, input_size=224, num_classes=1000, classifier='mlpconv4.cccp2',
         blocks=((11, 4, 0, (96, 96, 96)), (5, 1, 2, (256, 256, 256)), (3, 1, 1, (384, 384, 384)),
                 (3, 1, 1, (None, None, None))),
         dropout_blocks=(2,))
# Lin et al. 2014, Sec. 4.2 (and the authors' CIFAR-10 release): 32x32 input, 10 classes.
register('cifar_nin', NiN, input_size=32, num_classes=10, classifier='mlpconv3.cccp2',
         blocks=((5, 1, 2, (192, 160, 96)), (5, 1, 2, (192, 192, 192)),
                 (3, 1, 1, (192, 192, None))),
         dropout_blocks=(0, 1), pool_ceil_mode=True)
