"""BN-Inception (Ioffe & Szegedy 2015, Fig. 5) and Inception-ResNet-v1 (Szegedy et al. 2016,
Figs. 10-15): feature maps by stage, parameter counts (the reference port's for BN-Inception, the
figures' arithmetic for Inception-ResNet-v1), BatchNorm after every convolution, and a real
forward/backward through their modules at tiny widths."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models import create_model, layers, model_spec
from resnet_jax.models.bn_inception import BNInceptionModule
from resnet_jax.models.inception_v4 import Block8, Block35, Mixed7a, ReductionA


def _abstract(name):
  """(params, batch_stats, {top-level module: output shape}) at the registered input size, from
  shapes only."""
  size = model_spec(name)['input_size']
  model = create_model(name, num_classes=1000)
  top_level = lambda mdl, method: method == '__call__' and len(mdl.scope.path) == 1  # noqa: E731
  init = functools.partial(model.init, train=False, capture_intermediates=top_level,
                           mutable=True)
  variables = jax.eval_shape(init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3),
                                                                            jnp.float32))
  maps = {k: v['__call__'][0].shape[1:] for k, v in variables['intermediates'].items()
          if k != layers.FEATURES}  # the stage ends sown for features_only
  return variables['params'], variables['batch_stats'], maps


@pytest.fixture(scope='module')
def bn_inception():
  return _abstract('bn_inception')


@pytest.fixture(scope='module')
def inception_resnet_v1():
  return _abstract('inception_resnet_v1')


def _count(tree):
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def _conv_kernels(params):
  """{'/'-joined path of a conv: kernel shape} for every 4-D kernel."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {'/'.join(k.key for k in path[:-1]): leaf.shape for path, leaf in flat
          if path[-1].key == 'kernel' and len(leaf.shape) == 4}


def test_bn_inception_maps_by_stage(bn_inception):
  _, _, maps = bn_inception
  # Fig. 5 at 224x224: 112 after conv1, 56 after pool1, 28, 14 and 7 after 3c and 4e. 4c, 4d and
  # 4e give 608, 608 and 1056 channels, the sums of their branches (the column says 576, 576, 1024).
  assert maps['conv1_7x7_s2'] == (112, 112, 64)
  assert maps['conv2_3x3_reduce'] == (56, 56, 64)
  assert maps['conv2_3x3'] == (56, 56, 192)
  expected = {'3a': (28, 256), '3b': (28, 320), '3c': (14, 576), '4a': (14, 576),
              '4b': (14, 576), '4c': (14, 608), '4d': (14, 608), '4e': (7, 1056),
              '5a': (7, 1024), '5b': (7, 1024)}
  for stage, (side, channels) in expected.items():
    assert maps[f'inception_{stage}'] == (side, side, channels), stage
  assert maps['last_linear'] == (1000,)


def test_bn_inception_count_is_the_caffe_models_less_its_biases(bn_inception):
  params, _, _ = bn_inception
  kernels = _conv_kernels(params)
  # Cadene's pretrainedmodels `bninception` (the Caffe model): 11,295,240 parameters, with a bias
  # in each of its convolutions' output channels; ours has none (Sec. 3.2).
  conv_biases = sum(shape[-1] for shape in kernels.values())
  assert conv_biases == 10_016
  assert _count(params) + conv_biases == 11_295_240
  assert _count(params) == model_spec('bn_inception')['paper_params']


def test_bn_inception_double_3x3_and_no_5x5(bn_inception):
  params, _, _ = bn_inception
  kernels = _conv_kernels(params)
  assert len(kernels) == 3 + 8 * 7 + 2 * 5  # stem; 8 modules of 7 convs; 3c and 4e of 5
  assert {k[:2] for k in kernels.values()} == {(7, 7), (3, 3), (1, 1)}
  assert [p for p, k in kernels.items() if k[:2] == (7, 7)] == ['conv1_7x7_s2/conv']
  for stage in ['3a', '3b', '3c', '4a', '4b', '4c', '4d', '4e', '5a', '5b']:
    module = params[f'inception_{stage}']
    # Sec. 4.2: the 5x5 is two stacked 3x3s; the second keeps the first's width (Fig. 5).
    first = module['double_3x3_1']['conv']['kernel'].shape
    second = module['double_3x3_2']['conv']['kernel'].shape
    assert first[:2] == second[:2] == (3, 3) and first[3] == second[2] == second[3]
    # 3c and 4e reduce the grid: no 1x1 branch, no pool projection (Fig. 5, "pass through").
    assert ('1x1' in module) == ('pool_proj' in module) == (stage not in ('3c', '4e'))


def _assert_bn_after_every_conv(params, batch_stats, linear=()):
  kernels = _conv_kernels(params)
  for path in kernels:
    *outer, last = path.split('/')
    parent = functools.reduce(lambda tree, key: tree[key], outer, params)
    if last in linear:
      assert 'bias' in parent[last] and 'bn' not in parent, path
      continue
    assert last == 'conv' and 'bias' not in parent['conv'], path
    assert set(parent['bn']) == {'scale', 'bias'}, path
    stats = functools.reduce(lambda tree, key: tree[key], outer, batch_stats)
    assert stats['bn']['mean'].shape == (kernels[path][-1],), path
  return kernels


def test_bn_inception_batch_norm_after_every_conv(bn_inception):
  params, batch_stats, _ = bn_inception
  assert len(_assert_bn_after_every_conv(params, batch_stats)) == 69


def test_inception_resnet_v1_maps_by_stage(inception_resnet_v1):
  _, _, maps = inception_resnet_v1
  # Fig. 14: 299 -> 149 -> 147 -> 147 -> (pool) 73 -> 73 -> 71 -> 35x35x256.
  assert maps['conv2d_1a'] == (149, 149, 32)
  assert maps['conv2d_2a'] == (147, 147, 32)
  assert maps['conv2d_2b'] == (147, 147, 64)
  assert maps['conv2d_3b'] == (73, 73, 80)
  assert maps['conv2d_4a'] == (71, 71, 192)
  assert maps['conv2d_4b'] == (35, 35, 256)
  # Fig. 15: 5 x A at 35x35x256, Reduction-A to 17x17x896, 10 x B, Reduction-B to 8x8x1792, 5 x C.
  assert [maps[f'repeat.{i}'] for i in range(5)] == [(35, 35, 256)] * 5
  assert maps['mixed_6a'] == (17, 17, 896)
  assert [maps[f'repeat_1.{i}'] for i in range(10)] == [(17, 17, 896)] * 10
  assert maps['mixed_7a'] == (8, 8, 1792)
  assert [maps[f'repeat_2.{i}'] for i in range(5)] == [(8, 8, 1792)] * 5
  assert 'repeat.5' not in maps and 'repeat_1.10' not in maps and 'repeat_2.5' not in maps
  assert maps['classif'] == (1000,)


def _basic(cin, cout, kh, kw=None):
  """conv (no bias) + BN (scale, shift)."""
  return kh * (kw or kh) * cin * cout + 2 * cout


def _linear(cin, cout):
  """The residual 1x1 projection (bias, no BN), or a fully connected layer."""
  return cin * cout + cout


def test_inception_resnet_v1_count_from_the_figures(inception_resnet_v1):
  params, _, _ = inception_resnet_v1
  stem = (_basic(3, 32, 3) + _basic(32, 32, 3) + _basic(32, 64, 3) + _basic(64, 80, 1)
          + _basic(80, 192, 3) + _basic(192, 256, 3))  # Fig. 14
  block_a = (_basic(256, 32, 1) + _basic(256, 32, 1) + _basic(32, 32, 3) + _basic(256, 32, 1)
             + 2 * _basic(32, 32, 3) + _linear(96, 256))  # Fig. 10
  # Fig. 7 with Table 1's k, l, m, n = 192, 192, 256, 384: 256 + 384 + 256 = 896 channels.
  reduction_a = _basic(256, 384, 3) + _basic(256, 192, 1) + _basic(192, 192, 3) \
      + _basic(192, 256, 3)
  block_b = (2 * _basic(896, 128, 1) + _basic(128, 128, 1, 7) + _basic(128, 128, 7, 1)
             + _linear(256, 896))  # Fig. 11
  # Fig. 12: 896 + 384 + 256 + 256 = 1792 channels.
  reduction_b = (3 * _basic(896, 256, 1) + _basic(256, 384, 3) + _basic(256, 256, 3)
                 + 2 * _basic(256, 256, 3))
  block_c = (2 * _basic(1792, 192, 1) + _basic(192, 192, 1, 3) + _basic(192, 192, 3, 1)
             + _linear(384, 1792))  # Fig. 13
  head = _linear(1792, 1000)
  expected = stem + 5 * block_a + reduction_a + 10 * block_b + reduction_b + 5 * block_c + head
  assert expected == 22_756_328
  assert _count(params) == expected
  assert model_spec('inception_resnet_v1')['paper_params'] is None  # see its registration


def test_inception_resnet_v1_batch_norm_after_every_conv(inception_resnet_v1):
  params, batch_stats, _ = inception_resnet_v1
  kernels = _assert_bn_after_every_conv(params, batch_stats, linear=('conv2d',))
  # The linear 1x1 projections: one per residual block (Figs. 10, 11, 13).
  assert sum(p.endswith('/conv2d') for p in kernels) == 5 + 10 + 5


class _TinyModules(nn.Module):
  """BN-Inception's three module kinds and the Inception-ResNet-v1 blocks in a row, at tiny
  widths (Block17 differs from Block8 only in its kernels' shapes; it is left out to keep the
  compile short)."""

  @nn.compact
  def __call__(self, x, *, train):
    conv = functools.partial(nn.Conv, use_bias=False, param_dtype=jnp.float32)
    norm = functools.partial(layers.make_norm, 'batch', train=train)
    basic = functools.partial(layers.BasicConv2d, conv=conv, norm=norm, act=nn.relu)
    x = BNInceptionModule((2, 2, 3, 2, 3, 2), 'avg', basic)(x)  # 10 channels
    x = BNInceptionModule((2, 2, 3, 2, 3, 2), 'max', basic)(x)  # 10
    x = BNInceptionModule((0, 2, 3, 2, 3, 0), 'max', basic, strides=2)(x)  # 3 + 3 + 10 = 16
    residual = dict(basic=basic, linear_conv=functools.partial(conv, use_bias=True), act=nn.relu)
    x = Block35(scale=0.17, widths=(2, 2, 2, 2, 2, 2), **residual)(x)
    x = ReductionA((2, 2, 3, 4), basic)(x)  # 4 + 3 + 16 = 23
    x = Mixed7a(basic, (2, 3, 2, 2, 2, 2, 2))(x)  # 3 + 2 + 2 + 23 = 30
    x = Block8(scale=0.2, widths=(2, 2, 2, 2), **residual)(x)
    return x


def test_modules_forward_and_backward_at_tiny_widths():
  model = _TinyModules()
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 22, 22, 3), dtype=np.float32)
  # Random values of the initial shapes: no init program to compile, only the training step.
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  variables = jax.tree_util.tree_map(
      lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32), shapes)

  def loss(params):
    y, updates = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                             train=True, mutable=['batch_stats'])
    return jnp.mean(y ** 2), (y, updates)

  # XLA's backend optimizations would take a quarter of this test's time, for no benefit here.
  step = jax.jit(jax.value_and_grad(loss, has_aux=True),
                 compiler_options={'xla_backend_optimization_level': 0})
  (value, (y, updates)), grads = step(variables['params'])
  # 22 -> 11 (3c-like module) -> 5 (Reduction-A) -> 2 (Reduction-B).
  assert y.shape == (2, 2, 2, 30)
  assert np.isfinite(value) and value > 0
  # ReLU after every residual addition (Fig. 13): nothing negative comes out.
  assert float(jnp.min(y)) >= 0
  # Every parameter gets a gradient and every BatchNorm's running statistics move.
  assert all(bool(jnp.any(g != 0)) for g in jax.tree_util.tree_leaves(grads))
  moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), variables['batch_stats'],
                                 updates['batch_stats'])
  assert all(jax.tree_util.tree_leaves(moved))


def test_bn_inception_rejects_odd_grids_at_its_reductions():
  # 3c and 4e concatenate a 3x3/2 conv (padded) with a 3x3/2 max pool (unpadded, rounding up),
  # which agree on even grids only: 224 gives 28 and 14, 200 gives 25 at 3c.
  model = create_model('bn_inception', num_classes=10)
  init = functools.partial(model.init, train=False)
  with pytest.raises(ValueError, match='even grids'):
    jax.eval_shape(init, jax.random.key(0), jax.ShapeDtypeStruct((1, 200, 200, 3), jnp.float32))
