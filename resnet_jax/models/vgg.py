"""VGG (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image
Recognition"), Table 1 configurations A (11 layers), B (13), D (16) and E (19), as one `VGG`
module built from VGG blocks.

A VGG block is `num_convs` 3x3 convolutions (stride 1, padding 1) each followed by ReLU, then a
2x2/2 max pool (Sec. 2.1); a net is a sequence of `(num_convs, channels)` blocks. The ImageNet nets
follow torchvision's layout and names (`features.N`, an adaptive 7x7 average pool, `classifier.0/
3/6`), with or without BatchNorm after each convolution (the `_bn` variants; Ioffe & Szegedy
2015), so torchvision state dicts import by name.

`cifar_vgg16` is configuration D with BatchNorm on 32x32 CIFAR images and a single 512 -> classes
linear head on the 1x1 map left after the fifth pool, no dropout: the "VGG-16 for CIFAR" layout of
widely used CIFAR code (kuangliu/pytorch-cifar's `VGG('VGG16')`, 14.73M parameters). Liu & Deng
2015 ("Very Deep Convolutional Neural Network Based Image Classification Using Small Training
Sample Size") adapt VGG-16 to CIFAR-10 likewise with BatchNorm, but add stronger dropout and keep
a hidden FC layer; that head is not reproduced here.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.registry import register

HEADS = ('imagenet', 'cifar')


class VGG(layers.Classifier):
  """VGG: blocks of 3x3 convolutions + ReLU and a 2x2/2 max pool, then a classifier.

  Arguments:
    blocks: `(num_convs, channels)` per block (Table 1: five blocks, 64 -> 512 channels).
    batch_norm: BatchNorm between each convolution and its ReLU (torchvision's `vggNN_bn`); the
      convolutions keep their biases, as torchvision's do.
    head: 'imagenet': adaptive average pool to `pooled_size` x `pooled_size`, then FC-ReLU-dropout,
      FC-ReLU-dropout, FC (Sec. 2.1: 4096, 4096, classes); 'cifar': one linear layer on the
      flattened last map (512 features at 32x32).
    hidden / dropout_rate: width of the hidden FC layers and their dropout (Sec. 3.1: 0.5).
    act / kernel_init: names in layers.ACTIVATIONS / KERNEL_INITS (torchvision: Kaiming normal,
      fan_out, for convolutions; the FC layers are N(0, 0.01) as in torchvision and Sec. 3.1).
    bn_axis_name / bn_momentum / bn_epsilon: as in ResNet (epsilon 1e-5, torch's default).
    width: a multiplier of every convolution's channel count (rounded), as MobileNet's width
      (Howard et al. 2017, Sec. 4.2); not in the paper. 0.25 makes `cifar_vgg16` a net 2 CPU
      cores train in minutes, for the parity experiment (experiments/parity.py).
    fully_conv: dense evaluation (Sec. 3.2): the first FC layer becomes a `pooled_size` x
      `pooled_size` convolution (no adaptive pool), the others 1x1 convolutions, with the same
      parameters, and the class score map is averaged over space. At the training size (a
      `pooled_size` map; 1x1 for the 'cifar' head, 32x32 inputs) the logits are the usual ones.
  """

  blocks: Sequence[tuple[int, int]]
  num_classes: int
  dtype: Any = jnp.float32
  batch_norm: bool = False
  head: str = 'imagenet'
  pooled_size: int = 7
  hidden: int = 4096
  dropout_rate: float = 0.5
  act: str = 'relu'
  kernel_init: str = 'kaiming'
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  fully_conv: bool = False
  width: float = 1.0

  def backbone(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.head not in HEADS:
      raise ValueError(f'unknown head {self.head!r}; valid: {", ".join(HEADS)}')
    act = layers.get_activation(self.act)
    if not self.width > 0:
      raise ValueError(f'width must be > 0, got {self.width}')
    index = 0  # position in torchvision's `features` Sequential
    for num_convs, channels in scaled_blocks(self.blocks, self.width):
      for _ in range(num_convs):
        x = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    param_dtype=jnp.float32, kernel_init=layers.get_kernel_init(self.kernel_init),
                    name=f'features.{index}')(x)
        index += 1
        if self.batch_norm:
          x = layers.make_norm('batch', train=train, dtype=self.dtype, axis_name=self.bn_axis_name,
                               momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                               name=f'features.{index}')(x)
          index += 1
        x = act(x)
        index += 1
      # Feature maps as timm's VGG: each block's output before its pool, then the last pool's.
      x = nn.max_pool(self.stage_end(x), (2, 2), strides=(2, 2))
      index += 1
    return self.stage_end(x)

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    act = layers.get_activation(self.act)
    # torchvision and Sec. 3.1 initialise the FC layers from N(0, 0.01).
    dense = dict(dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=layers.get_kernel_init('normal_0.01'))
    if self.head == 'cifar':
      if pre_logits:  # what the linear head reads: the 512 channels of the 1x1 map
        return self._logits(x if self.fully_conv else layers.flatten_nchw(x))
      # The 1x1 map five pools leave of a 32x32 image is the window of the dense evaluation.
      x = layers.FlattenDense(self.num_classes, fully_conv=self.fully_conv, window=1,
                              name='classifier', **dense)(x)
      return self._logits(x)
    if not self.fully_conv:
      x = layers.adaptive_avg_pool(x, (self.pooled_size, self.pooled_size))
    # Sec. 3.2: at test time the first FC layer is a 7x7 convolution over the last map.
    x = layers.FlattenDense(self.hidden, fully_conv=self.fully_conv, window=self.pooled_size,
                            name='classifier.0', **dense)(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(act(x))
    # classifier: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear; on maps, 1x1 convolutions.
    x = act(nn.Dense(self.hidden, name='classifier.3', **dense)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    if pre_logits:  # the 4096 features of the second FC layer (timm's pre_logits)
      return self._logits(x)
    x = nn.Dense(self.num_classes, name='classifier.6', **dense)(x)
    return self._logits(x)

  def _logits(self, x: jax.Array) -> jax.Array:
    """Logits [N, classes] (or features [N, D]); Sec. 3.2: a class score map (fully_conv) is
    averaged over space."""
    if x.ndim == 4:
      x = jnp.mean(x, axis=(1, 2))
    return x.astype(layers.output_dtype(self.dtype))


def scaled_blocks(blocks: Sequence[tuple[int, int]], width: float) -> list[tuple[int, int]]:
  """`blocks` with each channel count times `width`, rounded (at least 1)."""
  return [(n, max(1, round(c * width))) for n, c in blocks]


# Simonyan & Zisserman 2015, Table 1: (convolutions, channels) of the five blocks.
CONFIGS = {
    'A': ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)),  # VGG-11
    'B': ((2, 64), (2, 128), (2, 256), (2, 512), (2, 512)),  # VGG-13
    'D': ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)),  # VGG-16
    'E': ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512)),  # VGG-19
}

# Sec. 3.1: 224x224 crops of ImageNet, 1000 classes; configurations A, B, D, E of Table 1. Table 2
# rounds their counts to millions (133, 133, 138, 144): these are torchvision's exact ones.
_IMAGENET = dict(input_size=224, num_classes=1000, classifier='classifier.6')
register('vgg11', VGG, **_IMAGENET, torch_twin='torchvision vgg11', paper_params=132_863_336,
         blocks=CONFIGS['A'])
register('vgg13', VGG, **_IMAGENET, torch_twin='torchvision vgg13', paper_params=133_047_848,
         blocks=CONFIGS['B'])
register('vgg16', VGG, **_IMAGENET, torch_twin='torchvision vgg16', paper_params=138_357_544,
         blocks=CONFIGS['D'])
register('vgg19', VGG, **_IMAGENET, torch_twin='torchvision vgg19', paper_params=143_667_240,
         blocks=CONFIGS['E'])
# With BatchNorm (not in the paper): each adds 2 x (its convolutions' filters) scales and biases.
register('vgg11_bn', VGG, **_IMAGENET, torch_twin='torchvision vgg11_bn',
         paper_params=132_868_840, blocks=CONFIGS['A'], batch_norm=True)
register('vgg13_bn', VGG, **_IMAGENET, torch_twin='torchvision vgg13_bn',
         paper_params=133_053_736, blocks=CONFIGS['B'], batch_norm=True)
register('vgg16_bn', VGG, **_IMAGENET, torch_twin='torchvision vgg16_bn',
         paper_params=138_365_992, blocks=CONFIGS['D'], batch_norm=True)
register('vgg19_bn', VGG, **_IMAGENET, torch_twin='torchvision vgg19_bn',
         paper_params=143_678_248, blocks=CONFIGS['E'], batch_norm=True)

# Configuration D with BatchNorm on 32x32 CIFAR-10; five pools leave 1x1x512 for a linear head.
register('cifar_vgg16', VGG, input_size=32, num_classes=10, classifier='classifier',
         torch_twin='resnet_jax.torch_peers CifarVGG', blocks=CONFIGS['D'], batch_norm=True,
         head='cifar')
