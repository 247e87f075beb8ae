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


class NiN(nn.Module):
  """Network In Network: mlpconv blocks, 3x3/2 max pools between them, global average pool.

  Arguments:
    blocks: `(kernel, stride, padding, widths)` of each mlpconv layer; a width None is
      `num_classes` (the last 1x1 convolution must give one map per class).
    dropout_blocks: indices of the blocks whose pooled output goes through dropout.
    dropout_rate: Sec. 3.2 / 4.2: 0.5 (the `dropout` RNG stream).
    pool_ceil_mode: round the pools' output size up (Caffe) instead of down.
    act / kernel_init: names in layers.ACTIVATIONS / KERNEL_INITS.
  """

  blocks: Sequence[BlockSpec]
  num_classes: int
  dtype: Any = jnp.float32
  dropout_blocks: Sequence[int] = ()
  dropout_rate: float = 0.5
  pool_ceil_mode: bool = False
  act: str = 'relu'
  kernel_init: str = 'kaiming_in'

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    act = layers.get_activation(self.act)
    conv = dict(dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=layers.get_kernel_init(self.kernel_init))
    if self.blocks[-1][-1][-1] is not None:
      raise ValueError('the last 1x1 convolution gives one map per class: its width must be None')
    for i, (kernel, stride, pad, widths) in enumerate(self.blocks):
      w_conv, w_cccp1, w_cccp2 = (self.num_classes if w is None else w for w in widths)
      name = f'mlpconv{i + 1}'
      x = act(nn.Conv(w_conv, (kernel, kernel), strides=(stride, stride),
                      padding=((pad, pad), (pad, pad)), name=f'{name}.conv', **conv)(x))
      x = act(nn.Conv(w_cccp1, (1, 1), name=f'{name}.cccp1', **conv)(x))
      x = act(nn.Conv(w_cccp2, (1, 1), name=f'{name}.cccp2', **conv)(x))
      if i < len(self.blocks) - 1:
        x = layers.max_pool(x, 3, 2, ceil_mode=self.pool_ceil_mode)
      if i in self.dropout_blocks:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    if x.shape[1] == 0 or x.shape[2] == 0:
      raise ValueError(f'NiN: empty class maps {x.shape}; the input is too small')
    # Sec. 3.2: global average pooling of the class maps gives the logits.
    x = jnp.mean(x, axis=(1, 2))
    return x.astype(layers.output_dtype(self.dtype))


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
