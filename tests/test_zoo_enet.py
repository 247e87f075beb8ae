"""ENet (Paszke et al. 2016): the segmentation net's parameter count (Table 3) and 512x512 class
map, max pooling with indices and unpooling against torch's, PReLU everywhere, spatial dropout,
and a training gradient through the encoder. The registered `enet_encoder`'s shapes and classifier
path are checked in test_models."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from resnet_jax.models import abstract_variables, count_params, layers
from resnet_jax.models.enet import (
    STAGE2,
    Bottleneck,
    ENet,
    ENetEncoder,
    max_pool_with_indices,
    max_unpool,
)

# Cityscapes' 19 evaluated classes, the paper's main benchmark (Sec. 5.1; Table 3 does not say
# which class count its 0.37M is for: 11, 12, 19 and 20 classes all give 0.37M).
CITYSCAPES_CLASSES = 19
# A short, narrow net for real computation on CPU: the downsampling bottlenecks, and one dilated
# and one asymmetric block in stages 2 and 3 (compiling all 28 bottlenecks takes ~20 s).
SMALL = dict(widths=(8, 16, 32), stage1_blocks=0, stage2_layout=((2, 0), (1, 5)))


def _key(seed):
  return jax.random.key(seed, impl='unsafe_rbg')  # no threefry compilation; values don't matter


def _params(variables):
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(variables['params']))


def _random_variables(abstract, seed=0):
  """Variables of the given shapes without an init pass: N(0, 0.1) parameters (PReLU slopes
  0.25), running means 0 and variances 1."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):  # numpy arrays: no device dispatch per leaf
    name = path[-1].key
    if name == layers.PRELU_PARAM:
      return np.full(leaf.shape, 0.25, np.float32)
    if name == 'var':
      return np.ones(leaf.shape, np.float32)
    if name == 'mean':
      return np.zeros(leaf.shape, np.float32)
    return 0.1 * rng.standard_normal(leaf.shape, np.float32)
  return jax.tree_util.tree_map_with_path(fill, abstract)


def test_paper_param_count_and_512_class_map():
  """Table 3: 0.37M parameters; Table 1: a 512x512 input gives C x 512 x 512 class maps."""
  model = ENet(num_classes=CITYSCAPES_CLASSES)
  x = jax.ShapeDtypeStruct((2, 512, 512, 3), jnp.float32)
  out, variables = jax.eval_shape(functools.partial(model.init_with_output, train=False),
                                  {'params': _key(0)}, x)
  assert out.shape == (2, 512, 512, CITYSCAPES_CLASSES) and out.dtype == jnp.float32
  assert set(variables) == {'params', 'batch_stats'}
  count = _params(variables)
  assert count == 366_655
  assert round(count, -4) == 370_000  # the paper's precision
  # The class count moves only the 2x2 full convolution: 16 x 4 weights per class.
  assert _params(abstract_variables(ENet(num_classes=12), (64, 64, 3))) == count - 7 * 64
  # Table 1's stages, and their widths: 64 and 128 in the encoder, 64 and 16 in the decoder.
  params = variables['params']
  assert len([k for k in params if k.startswith('bottleneck')]) == 5 + 9 + 8 + 3 + 2
  assert params['bottleneck2.8']['expand']['kernel'].shape == (1, 1, 32, 128)
  assert params['bottleneck2.3']['conv_kx1']['kernel'].shape == (5, 1, 32, 32)
  assert params['bottleneck2.3']['conv_1xk']['kernel'].shape == (1, 5, 32, 32)
  assert params['bottleneck5.0']['shortcut']['kernel'].shape == (1, 1, 64, 16)
  assert params['initial']['conv']['kernel'].shape == (3, 3, 3, 13)
  assert params['fullconv']['kernel'].shape == (2, 2, 16, CITYSCAPES_CLASSES)
  # Sec. 3: no convolution has a bias; the only 'bias' leaves are BatchNorm offsets.
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  assert all(path[-2].key.endswith('bn') for path, _ in flat if path[-1].key == 'bias')


def test_encoder_count():
  # The initial block and stages 1-3 of the 366,655-parameter net (less its stages 4-5, 25,424,
  # and its 2x2 full convolution to 19 classes, 1,216), then a 128 x 1000 + 1000 classifier.
  assert count_params('enet_encoder') == 366_655 - 25_424 - 1_216 + 129_000 == 469_015


def test_max_pool_indices_and_unpool_match_torch():
  x = np.random.default_rng(0).standard_normal((2, 8, 6, 3)).astype(np.float32)
  pooled, indices = max_pool_with_indices(jnp.asarray(x))
  assert pooled.shape == indices.shape == (2, 4, 3, 3) and indices.dtype == jnp.int32
  unpooled = np.asarray(max_unpool(pooled, indices))
  t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  t_pooled, t_indices = torch.nn.functional.max_pool2d(t, 2, 2, return_indices=True)
  t_unpooled = torch.nn.functional.max_unpool2d(t_pooled, t_indices, 2, 2)
  np.testing.assert_array_equal(pooled, t_pooled.numpy().transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(unpooled, t_unpooled.numpy().transpose(0, 2, 3, 1))
  # Each window keeps its maximum at its place, and zeros elsewhere: one value per window.
  assert np.all((unpooled == x) | (unpooled == 0))
  assert np.count_nonzero(unpooled) == pooled.size
  # Our window index (dy * 2 + dx) is torch's flat index into the input map, (2i + dy) W + 2j + dx.
  i, j = np.meshgrid(np.arange(4), np.arange(3), indexing='ij')
  dy, dx = np.divmod(np.asarray(indices), 2)
  flat = (2 * i[None, :, :, None] + dy) * 6 + 2 * j[None, :, :, None] + dx
  np.testing.assert_array_equal(flat, t_indices.numpy().transpose(0, 2, 3, 1))
  # The pool's gradient reaches the maxima alone, where the unpool puts them back.
  grad = jax.grad(lambda v: max_pool_with_indices(v)[0].sum())(jnp.asarray(x))
  np.testing.assert_array_equal(grad, unpooled != 0)


def test_segmentation_forward_unpools_at_the_max_positions():
  """A real forward at 64x64: per-pixel maps at the input's size, and bottleneck5.0's shortcut
  (its unpooled 1x1 conv) nonzero only where bottleneck1.0's max pool found its maxima."""
  model = ENet(num_classes=5, **SMALL)
  variables = _random_variables(abstract_variables(model, (64, 64, 3)))
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 64, 64, 3), np.float32))

  def run(v, x):
    out, state = model.apply(v, x, train=False, capture_intermediates=True)
    inner = state['intermediates']
    return out, inner['bottleneck1.0']['__call__'][0][1], inner['bottleneck5.0']['shortcut_bn']
  out, indices, shortcut_bn = jax.jit(run)(variables, x)
  assert out.shape == (2, 64, 64, 5) and np.isfinite(out).all()
  # The unpooled map is nonzero exactly at each window's recorded maximum (BN outputs aren't 0).
  shortcut = max_unpool(shortcut_bn['__call__'][0], indices)
  hit = np.asarray(max_unpool(jnp.ones(indices.shape), indices)) == 1
  assert np.all((np.asarray(shortcut) != 0) == hit)
  assert hit.sum() == indices.size


def test_prelu_slopes_everywhere():
  """Sec. 3: PReLU after every BN but the shortcuts', and after every addition: one slope per
  channel, 0.25 at the start, in every block of the encoder and decoder."""
  params = abstract_variables(ENet(num_classes=CITYSCAPES_CLASSES), (64, 64, 3))['params']
  for name, block in params.items():
    slopes = [v[layers.PRELU_PARAM].shape for k, v in block.items() if k.startswith('PReLU')]
    if name == 'fullconv':
      assert not slopes
    elif name == 'initial':
      assert slopes == [(16,)]
    else:  # reduce, main conv and expansion BNs, and the addition
      width = block['expand']['kernel'].shape[-1]
      assert slopes == [(width // 4,), (width // 4,), (width,), (width,)], name


def test_spatial_dropout_drops_whole_channels():
  block = Bottleneck(32, conv=functools.partial(nn.Conv, use_bias=False),
                     norm=functools.partial(layers.make_norm, 'batch', train=True),
                     act=layers.get_activation('prelu'), dropout_rate=0.5, dilation=2)
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 6, 6, 32), np.float32))
  variables = _random_variables(jax.eval_shape(functools.partial(block.init, train=False),
                                               _key(0), x))
  apply = functools.partial(block.apply, train=True, mutable=['batch_stats', 'intermediates'],
                            capture_intermediates=True)
  (_, indices), state = jax.jit(apply)(variables, x, rngs={'dropout': _key(3)})
  assert indices is None
  dropped = np.asarray(state['intermediates']['Dropout_0']['__call__'][0])
  zero = dropped == 0
  per_channel = zero.all(axis=(1, 2))
  assert np.all(zero.any(axis=(1, 2)) == per_channel)  # a channel is all zero or none of it
  assert 0.25 < per_channel.mean() < 0.75  # rate 0.5, of 4 x 32 (image, channel) pairs


def test_one_training_step_on_a_small_encoder():
  model = ENetEncoder(num_classes=10, **{**SMALL, 'stage2_layout': ((2, 0),)})  # a short compile
  variables = _random_variables(abstract_variables(model, (32, 32, 3)))
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((4, 32, 32, 3), np.float32))
  labels = jnp.asarray([0, 3, 5, 9])

  def loss(params):
    logits, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                            train=True, mutable=['batch_stats'], rngs={'dropout': _key(4)})
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

  value_and_grad = jax.jit(jax.value_and_grad(loss))
  before, grads = value_and_grad(variables['params'])
  norms = {'/'.join(p.key for p in path): float(jnp.abs(g).max())
           for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
  assert all(np.isfinite(v) for v in norms.values())
  # Every kernel, BN parameter and PReLU slope gets a gradient (dropout 0.01-0.1 here).
  assert sum(v > 0 for v in norms.values()) >= 0.95 * len(norms), norms
  assert norms['head/kernel'] > 0 and norms['initial/PReLU_0/prelu_slope'] > 0
  params = jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, variables['params'], grads)
  after, _ = value_and_grad(params)
  assert after < before
  assert model.stage2_layout != STAGE2  # the small net, not Table 1's
