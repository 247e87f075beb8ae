"""GoogLeNet / Inception v1 (Szegedy et al. 2015, "Going Deeper with Convolutions", Sec. 5,
Table 1).

Layout and names follow torchvision's `GoogLeNet`, so its state dicts import by name
(`conv1.conv`, `inception3a.branch2.1.bn`, `aux1.fc1`, `fc`). torchvision differs from the paper in
ways its weights depend on, and the defaults here follow torchvision:
- every convolution is followed by BatchNorm (eps 0.001) and has no bias (the paper predates BN;
  `norm='none'` gives biased convolutions without BN), and the paper's LocalRespNorm is left out
  (`lrn=True` puts it back where Fig. 3 has it, with the BVLC Caffe model's constants);
- the "5x5" branch uses a 3x3 convolution (torchvision issue 906; `branch3_kernel=5` gives the
  paper's 5x5 at 380,928 more parameters);
- max pools round up (`ceil_mode=True`), emulated here by extra -inf padding at the bottom/right.

The auxiliary classifiers (Sec. 5) exist only with `aux_logits=True`; they run when training
(the module then returns `(logits, aux1, aux2)`) and are skipped at inference, as the paper does.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers
from resnet_jax.models.alexnet import local_response_norm
from resnet_jax.models.registry import register

ModuleDef = Any


class Inception(nn.Module):
  """An Inception module (Szegedy et al. 2015, Fig. 2b): 1x1 | 1x1-3x3 | 1x1-5x5 | pool-1x1.

  `widths` = (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), a row of Table 1. Names are
  torchvision's: branch2/3/4 are Sequentials (`branch2.0`, `branch2.1`; `branch4.0` is the pool).
  """

  widths: Sequence[int]
  basic: ModuleDef
  branch3_kernel: int = 3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_proj = self.widths
    b1 = self.basic(n1x1, 1, name='branch1')(x)
    b2 = self.basic(n3x3red, 1, name='branch2.0')(x)
    b2 = self.basic(n3x3, 3, padding=1, name='branch2.1')(b2)
    b3 = self.basic(n5x5red, 1, name='branch3.0')(x)
    k = self.branch3_kernel
    b3 = self.basic(n5x5, k, padding=k // 2, name='branch3.1')(b3)
    b4 = layers.max_pool(x, 3, 1, padding=1, ceil_mode=True)
    b4 = self.basic(pool_proj, 1, name='branch4.1')(b4)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionAux(nn.Module):
  """Auxiliary classifier (Szegedy et al. 2015, Sec. 5): average pool to 4x4 (5x5/3 at 14x14),
  1x1 conv 128, fc 1024 + act, dropout, fc to the classes (torchvision names conv, fc1, fc2)."""

  num_classes: int
  basic: ModuleDef
  dense: ModuleDef
  act: Callable[[jax.Array], jax.Array]
  dropout_rate: float
  train: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = layers.adaptive_avg_pool(x, (4, 4))
    x = layers.flatten_nchw(self.basic(128, 1, name='conv')(x))
    x = self.act(self.dense(1024, name='fc1')(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not self.train)(x)
    return self.dense(self.num_classes, name='fc2')(x)


# Szegedy et al. 2015, Table 1: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
_TABLE1 = {
    '3a': (64, 96, 128, 16, 32, 32),
    '3b': (128, 128, 192, 32, 96, 64),
    '4a': (192, 96, 208, 16, 48, 64),
    '4b': (160, 112, 224, 24, 64, 64),
    '4c': (128, 128, 256, 24, 64, 64),
    '4d': (112, 144, 288, 32, 64, 64),
    '4e': (256, 160, 320, 32, 128, 128),
    '5a': (256, 160, 320, 32, 128, 128),
    '5b': (384, 192, 384, 48, 128, 128),
}


def caffe_lrn(x: jax.Array) -> jax.Array:
  """The LocalRespNorm of the BVLC Caffe GoogLeNet: local_size 5, alpha 1e-4, beta 0.75 and
  Caffe's default k = 1. Caffe's alpha multiplies the mean of the 5 squares (as torch's
  LocalResponseNorm), local_response_norm's alpha their sum: hence 1e-4 / 5."""
  return local_response_norm(x, size=5, alpha=1e-4 / 5, beta=0.75, k=1.0)


class GoogLeNet(layers.AuxClassifier):
  """GoogLeNet (Inception v1), 224x224 input, in torchvision's layout.

  `__call__(x, train=..., part=...)` follows layers.Classifier's `part` protocol ('features': the
  stem and modules up to inception5b's map; 'head' / 'pre_logits': that map to the logits / to
  the pooled, dropped-out features `fc` reads); it is its own because training with the
  auxiliary heads returns three arrays, from the whole net ('logits') only.

  Arguments:
    aux_logits: build the two auxiliary classifiers (after 4a and 4d). With it, `train=True`
      returns `(logits, aux1, aux2)`; inference returns the logits alone. Combine the losses as
      `loss + AUX_WEIGHT * (aux1_loss + aux2_loss)` in the training loop. With num_classes=0
      (no classifier) there are no auxiliary classifiers either.
    dropout_rate: before the classifier; 0.4 as Table 1 (torchvision trains with 0.2).
    aux_dropout_rate: in the auxiliary classifiers; 0.7 as Sec. 5.
    branch3_kernel: 3 as torchvision (and its weights), 5 as the paper.
    lrn: local response normalization after the first max pool and after conv3 (Fig. 3), as
      the BVLC Caffe GoogLeNet: 5 channels, alpha 1e-4 on their mean, beta 0.75, k 1. No
      parameters; torchvision's weights were trained without it.
    norm: 'batch' (torchvision) or 'none' (the paper: biased convolutions, no normalization).
    act / kernel_init: names in layers.ACTIVATIONS / KERNEL_INITS; 'normal_0.01' is
      torchvision's init (N(0, 0.01) truncated at +-2, i.e. not at all), used for the dense layers
      too.
    bn_axis_name / bn_momentum / bn_epsilon: BatchNorm settings (flax momentum; eps 0.001 as
      torchvision).
  """

  num_classes: int
  dtype: Any = jnp.float32
  aux_logits: bool = False
  dropout_rate: float = 0.4
  aux_dropout_rate: float = 0.7
  branch3_kernel: int = 3
  lrn: bool = False
  norm: str = 'batch'
  act: str = 'relu'
  kernel_init: str = 'normal_0.01'
  bn_axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-3

  # Szegedy et al. 2015, Sec. 5: the auxiliary losses are added with a weight of 0.3.
  AUX_WEIGHT: ClassVar[float] = 0.3

  def _dense(self) -> ModuleDef:
    return functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=layers.get_kernel_init(self.kernel_init))

  def trunk(self, x: jax.Array, *, train: bool,
            run_aux: bool) -> tuple[jax.Array, tuple[jax.Array | None, jax.Array | None]]:
    """The stem and the Inception modules up to inception5b's map, and the auxiliary heads'
    logits (None unless `run_aux`)."""
    act = layers.get_activation(self.act)
    conv = functools.partial(nn.Conv, use_bias=self.norm == 'none', dtype=self.dtype,
                             param_dtype=jnp.float32,
                             kernel_init=layers.get_kernel_init(self.kernel_init))
    norm = functools.partial(layers.make_norm, self.norm, train=train, dtype=self.dtype,
                             axis_name=self.bn_axis_name, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon)
    basic = functools.partial(layers.BasicConv2d, conv=conv, norm=norm, act=act)
    block = functools.partial(Inception, basic=basic, branch3_kernel=self.branch3_kernel)
    aux = functools.partial(InceptionAux, self.num_classes, basic=basic, dense=self._dense(),
                            act=act, dropout_rate=self.aux_dropout_rate, train=train)

    # Stage ends (no timm twin): the last map at each grid of Table 1, 112 (conv1), 56 (conv3,
    # after its LRN), 28 (3b), 14 (4e) and 7 (5b): 64, 192, 480, 832 and 1024 channels.
    x = basic(64, 7, strides=2, padding=3, name='conv1')(x)
    x = layers.max_pool(self.stage_end(x), 3, 2, ceil_mode=True)
    x = caffe_lrn(x) if self.lrn else x  # Fig. 3: pool1 -> LocalRespNorm
    x = basic(64, 1, name='conv2')(x)
    x = basic(192, 3, padding=1, name='conv3')(x)
    x = caffe_lrn(x) if self.lrn else x  # Fig. 3: conv3 -> LocalRespNorm -> pool2
    x = layers.max_pool(self.stage_end(x), 3, 2, ceil_mode=True)
    x = block(_TABLE1['3a'], name='inception3a')(x)
    x = block(_TABLE1['3b'], name='inception3b')(x)
    x = layers.max_pool(self.stage_end(x), 3, 2, ceil_mode=True)
    x = block(_TABLE1['4a'], name='inception4a')(x)
    aux1 = aux(name='aux1')(x) if run_aux else None
    x = block(_TABLE1['4b'], name='inception4b')(x)
    x = block(_TABLE1['4c'], name='inception4c')(x)
    x = block(_TABLE1['4d'], name='inception4d')(x)
    aux2 = aux(name='aux2')(x) if run_aux else None
    x = block(_TABLE1['4e'], name='inception4e')(x)
    x = layers.max_pool(self.stage_end(x), 2, 2, ceil_mode=True)
    x = block(_TABLE1['5a'], name='inception5a')(x)
    x = block(_TABLE1['5b'], name='inception5b')(x)
    return self.stage_end(x), (aux1, aux2)

  def classify(self, x: jax.Array, *, train: bool, pre_logits: bool) -> jax.Array:
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    if not pre_logits:
      x = self._dense()(self.num_classes, name='fc')(x)
    return x.astype(layers.output_dtype(self.dtype))


# Szegedy et al. 2015, Sec. 5: ImageNet, 224x224 crops, 1000 classes. The count is
# torchvision's googlenet(aux_logits=False); with both auxiliary heads it is 13,004,888.
register('googlenet', GoogLeNet, input_size=224, in_channels=3, num_classes=1000,
         classifier='fc', torch_twin='torchvision googlenet', paper_params=6_624_904)
