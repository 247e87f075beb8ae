"""Tests of the model zoo: every registered model's shapes, exact parameter counts, options."""
import functools
import re
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import restack_stage1
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.models import (
    abstract_variables,
    count_params,
    create_model,
    initial_variables,
    layers,
    list_models,
    model_spec,
)
from resnet_jax.models.resnet import ResNet


def _key(seed):
  # unsafe_rbg: on CPU each threefry kernel takes ~1.5 s to compile per shape; values don't matter.
  return jax.random.key(seed, impl='unsafe_rbg')


RNGS = {'params': _key(0), 'dropout': _key(1)}
SMALL = ['lenet5', 'cifar_resnet20', 'plain20', 'preact_resnet110']
tree_leaves = jax.tree_util.tree_leaves


def _image_shape(name):
  spec = model_spec(name)
  return (spec['input_size'], spec['input_size'], spec['in_channels'])


def _input(name, batch=2, abstract=True):
  shape = (batch, *_image_shape(name))
  if abstract:
    return jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.random.normal(jax.random.key(2), shape, jnp.float32)


def _bn_scales(params):
  """{'path/to/bn': scale} for every BatchNorm in a params tree."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {'/'.join(k.key for k in path[:-1]): v for path, v in flat if path[-1].key == 'scale'}


def _short_trace(name):
  """Overrides that keep a model's trace short: the 1000+-layer nets scan their repeated units
  (the per-unit layout of the same code is covered by the shallower variants)."""
  depth = sum(model_spec(name)['kwargs'].get('stage_sizes', ()))
  return {'scan_blocks': True} if depth > 200 else {}


@pytest.mark.parametrize('name', list_models())
def test_every_model_abstract_forward(name):
  """init + forward by shapes only, at the registered input size."""
  model = create_model(name, num_classes=7, **_short_trace(name))
  logits, variables = jax.eval_shape(
      functools.partial(model.init_with_output, train=False), RNGS, _input(name))
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert set(variables) <= {'params', 'batch_stats'}


@pytest.mark.parametrize('name', SMALL)
def test_small_models_real_forward(name):
  model = create_model(name, num_classes=10)
  x = _input(name, abstract=False)
  variables = initial_variables(model, _key(0), _image_shape(name))
  logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'], rngs=RNGS)
  assert logits.shape == (2, 10) and np.isfinite(logits).all()
  if 'batch_stats' in variables:  # LeNet has no BatchNorm
    changed = jax.tree_util.tree_map(
        lambda a, b: bool(jnp.any(a != b)), variables['batch_stats'], updates['batch_stats'])
    assert all(tree_leaves(changed))
  eval_logits = model.apply(variables, x, train=False)
  assert eval_logits.shape == (2, 10) and np.isfinite(eval_logits).all()


def test_scan_blocks_same_count_and_same_function():
  for name in ['cifar_resnet20', 'preact_resnet164']:
    assert count_params(name, scan_blocks=True) == count_params(name, scan_blocks=False)
  # Restacking the per-unit variables gives the scanned net the same function, in both modes.
  kwargs = dict(stage_sizes=(1, 3), widths=(16, 32), stem='cifar', num_classes=10)
  x = _input('cifar_resnet20', abstract=False)
  net, scan_net = ResNet(**kwargs), ResNet(**kwargs, scan_blocks=True)
  unrolled = initial_variables(net, _key(0), x.shape[1:])

  scanned = {k: restack_stage1(v) for k, v in unrolled.items()}
  assert (jax.tree_util.tree_structure(scanned)
          == jax.tree_util.tree_structure(abstract_variables(scan_net, x.shape[1:])))
  want, want_state = net.apply(unrolled, x, train=True, mutable=['batch_stats'])
  got, got_state = scan_net.apply(scanned, x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  jax.tree_util.tree_map(
      functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
      got_state['batch_stats'], restack_stage1(want_state['batch_stats']))
  np.testing.assert_allclose(
      scan_net.apply(scanned, x, train=False), net.apply(unrolled, x, train=False),
      rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', list_models())
def test_classifier_path_gives_the_logits(name):
  """The registered `classifier` names a module of `params` whose kernel's last axis is the class
  count: a Dense kernel [in, classes] or, in NiN and SqueezeNet, the HWIO kernel [1, 1, in,
  classes] of the 1x1 convolution whose class maps are averaged into the logits. 7 classes: a
  width no other layer has."""
  path = model_spec(name)['classifier']
  model = create_model(name, num_classes=7, **_short_trace(name))
  node = abstract_variables(model, _image_shape(name))['params']
  for key in path.split('/'):
    assert key in node, f'{name}: no {key!r} in {path!r}; the level has {sorted(node)}'
    node = node[key]
  assert node['kernel'].shape[-1] == 7, (path, node['kernel'].shape)


# He et al. 2016, Table 3 counts preact_resnet1001 without BatchNorm's scales and offsets.
_COUNTED_WITHOUT_NORMS = ('preact_resnet1001',)


def _norm_params(name):
  """BatchNorm scales and offsets of a registered model, at its registered class count."""
  model = create_model(name, num_classes=model_spec(name)['num_classes'], **_short_trace(name))
  params = abstract_variables(model, _image_shape(name))['params']
  return 2 * sum(v.size for v in tree_leaves(_bn_scales(params)))  # scale + bias


@pytest.mark.parametrize(
    'name', [n for n in list_models() if model_spec(n)['paper_params'] is not None])
def test_paper_param_counts(name):
  """count_params equals the count the paper or the twin reports, declared at registration. A
  count the paper rounds (0.27M, declared 270_000) is matched at its precision: to its last
  nonzero digit."""
  declared = model_spec(name)['paper_params']
  count = count_params(name)
  if name in _COUNTED_WITHOUT_NORMS:
    count -= _norm_params(name)
  zeros = len(str(declared)) - len(str(declared).rstrip('0'))
  assert round(count, -zeros) == declared, (count, declared)


def test_preact_resnet1001_count():
  # He et al. 2016, Table 3 says 10.2M: that figure leaves out the BatchNorm scales and offsets
  # (149,216 here); with them the net has 10.33M trainable parameters.
  assert model_spec('preact_resnet1001')['paper_params'] == 10_200_000
  assert count_params('preact_resnet1001') == 10_327_706
  assert _norm_params('preact_resnet1001') == 149_216


def test_lenet5_count_departs_from_the_papers_by_its_simplifications():
  # LeCun et al. 1998, Sec. II.B: 60,000. Parameter-free S2 and S4 (-12, -32); C3 reading all
  # six S2 maps, 96 5x5 kernels where Table I's sparse connections have 60 (+900); a dense
  # output of 84x10 + 10 instead of the RBF units (+850).
  assert count_params('lenet5') == model_spec('lenet5')['paper_params'] - 12 - 32 + 900 + 850


def test_lenet5_sparse_c3_is_table_one():
  """LeCun et al. 1998, Table I: C3's 16 maps read 60 of the 96 (S2 map, C3 map) pairs, so C3
  has 60 x 25 + 16 = 1,516 parameters (Sec. II.B), and map j depends on its table's maps only."""
  from resnet_jax.models.lenet import C3_TABLE, TableConv
  assert sum(map(len, C3_TABLE)) == 60
  assert count_params('lenet5', sparse_c3=True) == 61_706 - 2_416 + 1_516 == 60_806
  model = create_model('lenet5', num_classes=10, sparse_c3=True)
  c3 = initial_variables(model, _key(0), _image_shape('lenet5'))['params']['c3']
  assert sum(v.size for v in tree_leaves(c3)) == 1_516
  assert {k: v.shape for k, v in c3.items()} == {
      'kernel_3': (5, 5, 3, 6), 'kernel_4': (5, 5, 4, 9), 'kernel_6': (5, 5, 6, 1), 'bias': (16,)}
  # The same weights in a full 5x5x6x16 kernel, zero where Table I has no X: the same maps.
  dense = np.zeros((5, 5, 6, 16), np.float32)
  for n, maps in ((3, range(6)), (4, range(6, 15)), (6, [15])):
    for column, j in enumerate(maps):
      dense[:, :, list(C3_TABLE[j]), j] = c3[f'kernel_{n}'][:, :, :, column]
  conv = TableConv(C3_TABLE)
  s2 = jax.random.normal(_key(1), (2, 14, 14, 6))
  want = jax.lax.conv_general_dilated(s2, dense, (1, 1), 'VALID',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(conv.apply({'params': c3}, s2), want + c3['bias'], rtol=1e-5,
                             atol=1e-5)
  # Map j's gradient with respect to S2 map i is nonzero exactly where Table I has an X.
  for j, inputs in enumerate(C3_TABLE):
    grad = jax.grad(lambda x: conv.apply({'params': c3}, x)[..., j].sum())(s2)
    touched = np.abs(np.asarray(grad)).sum(axis=(0, 1, 2)) > 0
    assert touched.tolist() == [i in inputs for i in range(6)], j


def test_count_params_is_instant_for_deepest():
  for name in ['cifar_resnet1202', 'preact_resnet1001']:
    start = time.perf_counter()
    count_params(name, num_classes=100)  # a class count no other test uses: no cache hit
    assert time.perf_counter() - start < 5.0  # ~0.3 s: shapes only, repeated units traced once


def test_zero_init_residual():
  shape = _image_shape('cifar_resnet20')
  model = create_model('cifar_resnet20', num_classes=10, zero_init_residual=True)
  scales = _bn_scales(initial_variables(model, _key(0), shape)['params'])
  last = {k for k in scales if k.endswith('/bn2')}
  assert len(last) == 9  # one per residual unit: 3 stages x 3
  for k, v in scales.items():
    assert bool(jnp.all(v == (0.0 if k in last else 1.0))), k

  # Off by default: He et al. 2015 starts every BN scale at 1.
  model = create_model('cifar_resnet20', num_classes=10)
  scales = _bn_scales(initial_variables(model, _key(0), shape)['params'])
  assert all(bool(jnp.all(v == 1.0)) for v in scales.values())

  plain = create_model('plain20', num_classes=10, zero_init_residual=True)
  plain = initial_variables(plain, _key(0), shape)['params']
  assert all(bool(jnp.all(v == 1.0)) for v in _bn_scales(plain).values())


def test_shortcut_and_stride_options():
  # Option B adds 1x1 projections + BN at the two stage transitions: 16*32 + 2*32 + 32*64 + 2*64.
  assert count_params('cifar_resnet20', shortcut='B') - count_params('cifar_resnet20') == 2752
  # Option C projects in all 9 units: + 3 x (16*16 + 2*16) + 2 x (32*32 + 2*32) + 2 x (64*64 +
  # 2*64) for the seven units that keep their shape.
  extra = (count_params('cifar_resnet20', shortcut='C')
           - count_params('cifar_resnet20', shortcut='B'))
  assert extra == 3 * 288 + 2 * 1088 + 2 * 4224
  # ImageNet ResNet-34, He et al. 2015, Table 3: C adds a projection to each of the 13 units that
  # keep their shape (3 at 64, 3 at 128, 5 at 256, 2 at 512 channels; conv + BN each).
  extra = sum(n * (c * c + 2 * c) for n, c in ((3, 64), (3, 128), (5, 256), (2, 512)))
  assert count_params('resnet34', shortcut='C') - count_params('resnet34') == extra
  assert count_params('resnet50', stride_on_1x1=True) == count_params('resnet50')
  assert count_params('plain20') == count_params('cifar_resnet20')  # option A has no parameters


def test_bfloat16_activations_float32_params_and_logits():
  model = create_model('cifar_resnet20', num_classes=10, dtype=jnp.bfloat16)
  x = _input('cifar_resnet20')
  variables = abstract_variables(model, _image_shape('cifar_resnet20'))
  assert {v.dtype for v in tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
  apply = functools.partial(model.apply, train=True, mutable=['batch_stats', 'intermediates'],
                            capture_intermediates=True)
  logits, state = jax.eval_shape(apply, variables, x)
  assert logits.dtype == jnp.float32
  inter = state['intermediates']
  assert inter['stem_conv']['__call__'][0].dtype == jnp.bfloat16
  assert inter['stage2_block2']['__call__'][0].dtype == jnp.bfloat16
  assert {v.dtype for v in tree_leaves(state['batch_stats'])} == {jnp.dtype(jnp.float32)}


def test_sync_batchnorm_under_shard_map():
  """bn_axis_name='batch': each shard (one example per device) sees whole-batch statistics."""
  n = jax.device_count()
  kwargs = dict(stage_sizes=(1, 1), widths=(4, 8), stem='cifar', num_classes=3)
  x = jax.random.normal(jax.random.key(3), (n, 8, 8, 3))
  # Jitted: one small compile each, instead of eager per-op compiles at new shapes.
  variables = jax.jit(functools.partial(initial_variables, ResNet(**kwargs),
                                        image_shape=x.shape[1:]))(_key(0))
  apply = functools.partial(ResNet(**kwargs).apply, train=True, mutable=['batch_stats'])
  want, want_state = jax.jit(apply)(variables, x)

  synced = ResNet(**kwargs, bn_axis_name='batch')
  mesh = jax.make_mesh((n,), ('batch',))
  step = jax.shard_map(
      lambda v, xb: synced.apply(v, xb, train=True, mutable=['batch_stats']),
      mesh=mesh, in_specs=(P(), P('batch')), out_specs=(P('batch'), P()))
  got, got_state = jax.jit(step)(variables, jax.device_put(x, NamedSharding(mesh, P('batch'))))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  jax.tree_util.tree_map(
      functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5), got_state, want_state)


def test_dropout_uses_named_stream():
  model = create_model('lenet5', num_classes=10, dropout_rate=0.5)
  x = _input('lenet5', abstract=False)
  variables = initial_variables(model, _key(0), _image_shape('lenet5'))
  a = model.apply(variables, x, train=True, rngs={'dropout': _key(4)})
  b = model.apply(variables, x, train=True, rngs={'dropout': _key(5)})
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(
      model.apply(variables, x, train=False), model.apply(variables, x, train=False))


def test_lenet_options():
  x = _input('lenet5')
  for overrides in [{'act': 'relu'}, {'pool': 'max'}]:
    model = create_model('lenet5', num_classes=10, **overrides)
    logits, _ = jax.eval_shape(functools.partial(model.init_with_output, train=False), RNGS, x)
    assert logits.shape == (2, 10)


def test_spec_and_list():
  names = list_models()
  assert names == sorted(names) and len(names) == len(set(names))
  for name in ['lenet5', 'resnet50', 'cifar_resnet1202', 'plain110', 'preact_resnet1001']:
    assert name in names
  assert (model_spec('lenet5')['input_size'], model_spec('lenet5')['in_channels']) == (32, 1)
  assert (model_spec('resnet50')['input_size'], model_spec('resnet50')['in_channels']) == (224, 3)
  assert model_spec('cifar_resnet56')['input_size'] == 32


def test_unknown_names_are_errors():
  with pytest.raises(ValueError, match='resnet500'):
    create_model('resnet500', num_classes=10)
  with pytest.raises(ValueError, match='did you mean: resnet50'):
    create_model('resnet500', num_classes=10)
  with pytest.raises(ValueError, match='no_such_net'):
    count_params('no_such_net')
  with pytest.raises(ValueError, match='no_such_net'):
    model_spec('no_such_net')
  with pytest.raises(TypeError, match='widhts'):
    create_model('resnet18', num_classes=10, widhts=(1, 2, 3, 4))
  with pytest.raises(TypeError, match='widhts'):
    count_params('resnet18', widhts=(1, 2, 3, 4))
  with pytest.raises(ValueError, match='relu'):  # the message lists the valid names
    layers.get_activation('swishy')
  with pytest.raises(ValueError, match='kaiming'):
    layers.get_kernel_init('he')
  with pytest.raises(ValueError, match='batch'):
    layers.make_norm('group', train=False)


def test_activation_registry():
  x = jnp.linspace(-2.0, 2.0, 5)
  for name in ['relu', 'leaky_relu', 'elu', 'selu', 'tanh', 'sigmoid', 'gelu']:
    assert layers.get_activation(name)(x).shape == (5,)
  assert layers.make_norm('none', train=True)(x) is x
  assert isinstance(layers.make_norm('batch', train=True), nn.BatchNorm)


def test_relu_is_nn_relu_in_value_and_gradient():
  x = jnp.array([-2.0, -0.0, 0.0, 1e-30, 3.0, jnp.inf, -jnp.inf, jnp.nan])
  np.testing.assert_array_equal(layers.relu(x), nn.relu(x))  # NaN stays NaN, as in a max
  grad = jax.vmap(jax.grad(layers.relu))
  np.testing.assert_array_equal(grad(x[:-1]), jax.vmap(jax.grad(nn.relu))(x[:-1]))
  assert layers.get_activation('relu') is layers.relu


@functools.cache
def _compiled_resnet20_gradient() -> str:
  """The compiled HLO text of a training-mode ResNet-20 gradient at batch 8."""
  model = create_model('cifar_resnet20', num_classes=10)
  x = jnp.ones((8, 32, 32, 3))
  variables = abstract_variables(model, x.shape[1:])

  def loss(params, batch_stats):
    logits, _ = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                            mutable=['batch_stats'])
    return logits.sum()

  return jax.jit(jax.grad(loss)).lower(variables['params'],
                                       variables['batch_stats']).compile().as_text()


def test_weight_gradient_transposes_read_stored_activations():
  """The form of `layers.relu` keeps XLA:CPU from recomputing the residual stream inside the
  transposes of the weight gradients (a third of a ResNet-20 step with `nn.relu`): each transpose
  of a 4-D activation in the compiled gradient reads one stored array."""
  hlo = _compiled_resnet20_gradient()
  # Fused computations whose root transposes an activation (N, H, W, C) -> (C, H, W, N).
  transposes = re.finditer(r'\n(%\S+) \(([^\n]*)\) -> f32\[\d+,\d+,\d+,8\]', hlo)
  bodies = {m.group(1): m.group(2) for m in transposes}
  assert bodies, 'no activation transposes found: the weight-gradient lowering changed'
  for name, params in bodies.items():
    assert params.count('f32[8,') <= 1, f'{name} recomputes activations: {params[:300]}'


def _batch_norm_loss(module, variables, x, weights):
  """A loss that reaches x both through the normalised output and, squared, through its scale."""
  y, state = module.apply(variables, x, mutable=['batch_stats'])
  y = y.astype(jnp.float32)
  return jnp.sum(y * weights) + 0.1 * jnp.sum(y[:1] ** 2), state


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_batch_norm_matches_flax(dtype):
  """layers.BatchNorm (one-pass statistics, closed-form gradient) gives flax's BatchNorm values,
  running statistics and gradients, in training and in evaluation."""
  x = jax.random.normal(_key(4), (16, 6, 6, 12)) * 3.0 + 1.5
  weights = jax.random.normal(_key(5), x.shape)
  settings = dict(momentum=0.9, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32)
  ours, flax_bn = layers.BatchNorm(**settings), nn.BatchNorm(**settings)
  variables = flax_bn.init(RNGS, x, use_running_average=False)
  variables = jax.tree_util.tree_map(  # scales, offsets and statistics away from 1 and 0
      lambda v: v + jax.random.uniform(_key(6), v.shape, minval=0.2, maxval=0.8), variables)
  assert (jax.tree_util.tree_structure(ours.init(RNGS, x, use_running_average=False))
          == jax.tree_util.tree_structure(variables))
  grads = {}
  for name, module in (('ours', ours), ('flax', flax_bn)):
    loss = functools.partial(_batch_norm_loss, module.clone(use_running_average=False))
    (value, state), (d_vars, d_x) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
        variables, x.astype(dtype), weights)
    grads[name] = (value, state, d_vars['params'], d_x.astype(jnp.float32))
  tolerance = 1e-5 if dtype == jnp.float32 else 1e-2  # bf16: x and its gradient round to 8 bits
  for got, want in zip(tree_leaves(grads['ours']), tree_leaves(grads['flax'])):
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * np.abs(want).max())
  evaluate = functools.partial(jax.jit(lambda m, v, x: m.apply(v, x), static_argnums=0))
  got = evaluate(ours.clone(use_running_average=True), variables, x.astype(dtype))
  assert got.dtype == dtype
  np.testing.assert_array_equal(
      got, evaluate(flax_bn.clone(use_running_average=True), variables, x.astype(dtype)))


def test_sync_batch_norm_gradients_match_flax():
  """Under shard_map with axis_name, the gradient of x sums over every device's batch, as
  autodiff of flax's pmean does, and each device's parameter gradient is its own."""
  n = jax.device_count()
  mesh = jax.make_mesh((n,), ('batch',))
  x = jax.random.normal(_key(7), (2 * n, 4, 4, 6)) * 2.0 - 1.0
  weights = jax.random.normal(_key(8), x.shape)
  settings = dict(axis_name='batch', use_running_average=False)
  variables = nn.BatchNorm(**settings).init(RNGS, x)
  results = []
  for module in (layers.BatchNorm(**settings), nn.BatchNorm(**settings)):
    def per_device(v, xb, wb, module=module):
      loss = functools.partial(_batch_norm_loss, module)
      (value, state), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(v, xb, wb)
      return jax.lax.psum(value, 'batch'), state, grads[0]['params'], grads[1]
    step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P('batch'), P('batch')),
                         out_specs=(P(), P(), P('batch'), P('batch')), check_vma=False)
    shard = functools.partial(jax.device_put, device=NamedSharding(mesh, P('batch')))
    results.append(jax.jit(step)(variables, shard(x), shard(weights)))
  for got, want in zip(tree_leaves(results[0]), tree_leaves(results[1])):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_training_step_has_no_reduce_window():
  """BatchNorm's sums reach XLA:CPU as variadic reductions, which it does not rewrite into a
  reduce-window of a materialised operand (its precision rewrite of a plain sum): in a ResNet-20
  gradient no reduce-window reads an activation, and each BatchNorm has one per-image reduction
  fusion forward (sum x, sum x^2) and one backward (sum g, sum g x_hat)."""
  hlo = _compiled_resnet20_gradient()
  activation_windows = re.findall(r'\n%\S*reduce-window\S* \(\w[^:]*: f32\[8,\d+,\d+,\d+\]', hlo)
  assert not activation_windows, activation_windows
  per_image_sums = re.findall(r'\) -> \(f32\[8,\d+\], f32\[8,\d+\]\) \{', hlo)
  assert len(per_image_sums) == 2 * 19, len(per_image_sums)  # 19 BatchNorms


def test_hessian_products_through_training_mode_batch_norm():
  """Hessian-vector products of a training-mode loss through layers.BatchNorm, as grad-of-grad
  and as jvp-of-grad (custom_vjp's forward and backward rules are plain, differentiable JAX),
  equal jvp-of-grad through flax's own BatchNorm (norm='flax_batch', same variables). Forward
  mode of the loss itself needs 'flax_batch': a custom_vjp has no jvp of its own."""
  kwargs = dict(stage_sizes=(1, 1), widths=(4, 8), stem='cifar', num_classes=3)
  x = jax.random.normal(_key(9), (6, 8, 8, 3))
  variables = jax.jit(functools.partial(initial_variables, ResNet(**kwargs),
                                        image_shape=x.shape[1:]))(_key(0))
  params, batch_stats = variables['params'], variables['batch_stats']
  direction = jax.tree_util.tree_map(lambda p: jax.random.normal(_key(10), p.shape), params)

  def loss(norm):
    model = ResNet(**kwargs, norm=norm)

    def f(p):
      logits, _ = model.apply({'params': p, 'batch_stats': batch_stats}, x, train=True,
                              mutable=['batch_stats'])
      return jnp.sum(jax.nn.log_softmax(logits)[:, 0])
    return f

  def grad_dot(p):
    return jax.tree_util.tree_reduce(
        jnp.add, jax.tree_util.tree_map(jnp.vdot, jax.grad(loss('batch'))(p), direction))

  def jvp_of_grad(norm):
    return jax.jit(lambda p: jax.jvp(jax.grad(loss(norm)), (p,), (direction,))[1])(params)
  want = jvp_of_grad('flax_batch')
  for hvp in (jax.jit(jax.grad(grad_dot))(params), jvp_of_grad('batch')):
    for got, expected in zip(tree_leaves(hvp), tree_leaves(want)):
      np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
  jax.jvp(loss('flax_batch'), (params,), (direction,))
  with pytest.raises(TypeError, match='forward-mode'):
    jax.jvp(loss('batch'), (params,), (direction,))


def test_imagenet_plain_nets_are_the_resnets_without_shortcuts():
  # He et al. 2015, Table 1 / Fig. 4: plain-18/34 are ResNet-18/34 without shortcuts, so without
  # option B's three projections (1x1 conv + BN at 64->128, 128->256, 256->512).
  projections = sum(a * b + 2 * b for a, b in ((64, 128), (128, 256), (256, 512)))
  assert projections == 173_824
  assert count_params('plain18') == count_params('resnet18') - projections == 11_515_688
  assert count_params('plain34') == count_params('resnet34') - projections == 21_623_848
  assert model_spec('plain34')['kwargs']['residual'] is False


def test_torch_head_init_draws_as_torch_linear():
  # torch.nn.Linear(64, 10): weights and bias U(-1/8, 1/8); flax's default: LeCun normal, zero bias.
  shape = _image_shape('cifar_resnet20')
  head = lambda **kw: initial_variables(create_model('cifar_resnet20', num_classes=10, **kw),
                                        _key(0), shape)['params']['head']
  torch_like, lecun = head(head_init='torch'), head()
  for values in (torch_like['kernel'], torch_like['bias']):
    assert float(jnp.abs(values).max()) <= 1 / 8
  assert abs(float(jnp.std(torch_like['kernel'])) - 1 / 8 / np.sqrt(3)) < 0.008  # 640 draws
  assert float(jnp.abs(torch_like['bias']).min()) > 0
  assert float(jnp.abs(lecun['bias']).max()) == 0
  assert abs(float(jnp.std(lecun['kernel'])) - 1 / 8) < 0.015  # variance 1/fan_in
  with pytest.raises(ValueError, match="unknown head_init 'kaiming'; valid: lecun, torch"):
    head(head_init='kaiming')


def test_torch_batch_norm_keeps_torch_running_variance():
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(0).normal(2.0, 3.0, (4, 5, 5, 3)).astype(np.float32)
  reference = torch.nn.BatchNorm2d(3)  # momentum 0.1 == flax's 0.9
  y_torch = reference.train()(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
  for norm, unbiased in (('torch_batch', True), ('batch', False)):

    class Net(nn.Module):
      @nn.compact
      def __call__(self, x):
        return layers.make_norm(norm, train=True, name='bn')(x)

    variables = Net().init(_key(0), x)
    y, updated = Net().apply(variables, x, mutable=['batch_stats'])
    stats = updated['batch_stats']['bn']
    np.testing.assert_allclose(y, y_torch.detach().numpy(), atol=1e-5)  # Same normalisation.
    np.testing.assert_allclose(stats['mean'], reference.running_mean.numpy(), rtol=1e-5)
    biased = 0.9 + 0.1 * x.reshape(-1, 3).var(0)
    np.testing.assert_allclose(stats['var'], reference.running_var.numpy() if unbiased else biased,
                               rtol=1e-5)
  assert not np.allclose(biased, reference.running_var.numpy(), rtol=1e-4)  # n/(n-1) = 100/99
