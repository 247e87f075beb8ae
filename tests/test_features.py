"""The model API research forks build on, for every registered model: `num_classes=0` (pooled
features, no classifier), `forward_features` / `forward_head` (the two halves of the net, with
the whole net's parameters), and `features_only` (the maps at the stage ends, with the channels
and reductions `feature_info` lists, checked against timm's where timm has the net)."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models import (
    abstract_variables,
    count_params,
    create_model,
    feature_info,
    initial_variables,
    list_models,
    model_spec,
)

NAMES = list_models()
# Nets without stages: features_only is refused, forward_features gives the classifier's input.
STAGELESS = {n for n in NAMES if model_spec(n)['module'] == 'MLP'}
# Nets whose last class-independent layer is not the classifier's input: the whole last mlpconv
# block of D2L's NiN has one map per class (its cccp2 reads num_classes maps); without classes
# its pooled features are the 384 maps that block reads.
POOLED_WIDTH = {'nin': 384}
# Nets whose eval output averages several passes: FMPNet's is the log of the mean softmax over
# test_draws pooling draws (Graham 2014, Sec. 4); its halves are one pass, the first test draw.
ENSEMBLES = {n for n in NAMES if model_spec(n)['module'] == 'FMPNet'}
# Numbers for the nets a CPU runs in a few seconds; the rest are checked by shapes.
NUMERIC_LIMIT = 30_000_000


def _key(seed):
  return jax.random.key(seed, impl='unsafe_rbg')


def _shape(name):
  spec = model_spec(name)
  return (spec['input_size'], spec['input_size'], spec['in_channels'])


def _overrides(name):
  depth = sum(model_spec(name)['kwargs'].get('stage_sizes', ()))
  return {'scan_blocks': True} if depth > 200 else {}


def _classifier(params, name):
  node = params
  for key in model_spec(name)['classifier'].split('/'):
    node = node[key]
  return node


def _apply(model, variables, x, **kwargs):
  return model.apply(variables, x, train=False, rngs={'fmp': _key(3)}, **kwargs)


@pytest.mark.parametrize('name', NAMES)
def test_every_model_by_shape(name):
  """num_classes=0 returns [N, D], D the classifier's fan-in, and makes no classifier;
  forward_features then forward_head gives [N, classes]; every staged net lists its stage ends
  and features_only returns maps of those shapes, only the picked ones, with no head
  parameters. By shapes only: nothing is initialised or run."""
  spec = model_spec(name)
  model = create_model(name, num_classes=7, **_overrides(name))
  variables = abstract_variables(model, _shape(name))
  x = jax.ShapeDtypeStruct((2, *_shape(name)), jnp.float32)
  kernel = _classifier(variables['params'], name)['kernel']
  pooled_model = create_model(name, num_classes=0, **_overrides(name))
  init = functools.partial(pooled_model.init_with_output, train=False)
  pooled, pooled_vars = jax.eval_shape(init, {'params': _key(0), 'fmp': _key(1)}, x)
  width = POOLED_WIDTH.get(name, kernel.shape[-2])
  assert pooled.shape == (2, width) and pooled.dtype == jnp.float32, pooled.shape
  path = spec['classifier'].split('/')
  node = pooled_vars['params']
  for key in path[:-1]:
    node = node[key]
  assert path[-1] not in node, f'{name}: num_classes=0 still made {spec["classifier"]}'

  def halves(variables, x):
    maps = _apply(model, variables, x, method='forward_features')
    return maps, _apply(model, variables, maps, method='forward_head')
  maps, logits = jax.eval_shape(halves, variables, x)
  assert logits.shape == (2, 7)

  info = feature_info(name, **_overrides(name))
  if name in STAGELESS:
    assert info == []
    with pytest.raises(ValueError, match='no stages'):
      create_model(name, num_classes=7, features_only=True)
    return
  size = spec['input_size']
  assert len(info) >= 2, info
  reductions = [d['reduction'] for d in info]
  assert reductions == sorted(reductions) and reductions[0] >= 1, reductions
  extractor = create_model(name, num_classes=7, features_only=True, out_indices=(0, -1),
                           **_overrides(name))
  assert extractor.out_indices == (0, len(info) - 1)
  own = jax.eval_shape(lambda x: extractor.init({'params': _key(0), 'fmp': _key(1)}, x), x)
  leaves = lambda tree: sum(v.size for v in jax.tree_util.tree_leaves(tree))  # noqa: E731
  assert leaves(own['params']) < leaves(variables['params'])
  # The whole net's variables serve too (its head's are left unused).
  picked = jax.eval_shape(functools.partial(extractor.apply, rngs={'fmp': _key(3)}), variables, x)
  for got, want in zip(picked, (info[0], info[-1])):
    assert got.shape[0] == 2 and got.shape[-1] == want['channels']
    # The stride bounds the side; unpadded convolutions trim more (299 -> 19 at stride 16,
    # LeNet-5's C5 1x1 at stride 4 of 32, D2L NiN's 5x5 at stride 32 of 224).
    assert 1 <= got.shape[1] <= -(-size // want['reduction'])
  assert picked[-1].shape == maps.shape or name in ENSEMBLES or info[-1]['channels'] != (
      maps.shape[-1])  # the last stage end is the backbone's output where the widths agree


def _numeric_representatives() -> list[str]:
  """One registered net per module class: the smallest under NUMERIC_LIMIT parameters. The
  split into halves is code of the class, the same for all its variants."""
  by_class = {}
  for name in NAMES:
    count = count_params(name, num_classes=7, **_overrides(name))
    module = model_spec(name)['module']
    if count <= NUMERIC_LIMIT and count < by_class.get(module, (None, math.inf))[1]:
      by_class[module] = (name, count)
  return sorted(name for name, _ in by_class.values())


# Nets that take any input from 96x96 (a global pool before the head) run at 96 here.
SMALL_INPUT = 96
# The classes whose every registered net is over NUMERIC_LIMIT, thinned to CPU size (their
# heads' code is the same at any width); OverFeat's flattening head wants its own input size.
THINNED = {'alexnet': {'hidden': 64}, 'overfeat_fast': {'hidden': (64, 64)},
           'vgg11': {'hidden': 64, 'width': 0.25},
           'fractalnet20': {'widths': (8, 16, 32, 64, 64)},
           'inception_resnet_v2': {'stage_sizes': (1, 1, 1)},  # v4's, v1's and v2's head
           'nin': {}}  # and D2L's NiN, whose head is its whole last block
# Representatives whose head is another's code, left to the shape test: time is compile time.
SAME_HEAD = ('inception_resnet_v1', 'mobilenet_v2')


@pytest.mark.parametrize('name', sorted({*_numeric_representatives(), *THINNED} - {*SAME_HEAD}))
def test_the_two_halves_and_the_pooled_features_give_the_logits(name):
  """forward_head(forward_features(x)) is the net's output; the pooled features are
  forward_head's pre_logits; for a dense classifier they times its kernel plus its bias are the
  logits."""
  spec = model_spec(name)
  fixed = spec['input_size'] <= SMALL_INPUT or name.startswith('overfeat')
  side = spec['input_size'] if fixed else SMALL_INPUT
  shape = (side, side, spec['in_channels'])
  overrides = {**_overrides(name), **THINNED.get(name, {})}
  model = create_model(name, num_classes=7, **overrides)
  variables = jax.jit(functools.partial(initial_variables, model, image_shape=shape))(_key(0))
  x = jax.random.normal(_key(1), (2, *shape), jnp.float32)
  pooled_model = create_model(name, num_classes=0, **overrides)

  @jax.jit
  def outputs(variables, x):
    maps = _apply(model, variables, x, method='forward_features')
    return (_apply(model, variables, x), _apply(model, variables, maps, method='forward_head'),
            _apply(model, variables, maps, method='forward_head', pre_logits=True),
            _apply(pooled_model, variables, x))
  logits, head_logits, pre, pooled = outputs(variables, x)
  if name in ENSEMBLES:  # one draw is the output up to log_softmax; the halves give its logits
    one = create_model(name, num_classes=7, test_draws=1, **overrides)
    np.testing.assert_allclose(jax.nn.log_softmax(head_logits), _apply(one, variables, x),
                               rtol=1e-5, atol=1e-5)
    logits = head_logits
  np.testing.assert_allclose(head_logits, logits, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(pooled, pre)
  head = _classifier(variables['params'], name)
  if head['kernel'].ndim == 2:  # a dense classifier (NiN and SqueezeNet pool class maps)
    np.testing.assert_allclose(pooled @ head['kernel'] + head['bias'], logits,
                               rtol=1e-4, atol=1e-4)


# Our net -> timm's net of the same architecture (the twin, or timm's copy of the torchvision
# net): their feature_info must list the same channels and reductions.
TIMM_FEATURES = {
    'resnet18': 'resnet18', 'resnet34': 'resnet34', 'resnet50': 'resnet50',
    'resnet101': 'resnet101', 'resnet152': 'resnet152',
    'preact_resnet18': 'resnetv2_18', 'preact_resnet50': 'resnetv2_50',
    'vgg11': 'vgg11', 'vgg16': 'vgg16', 'vgg16_bn': 'vgg16_bn', 'vgg19_bn': 'vgg19_bn',
    'mobilenet_v1': 'mobilenetv1_100', 'mobilenet_v2': 'mobilenetv2_100',
    'inception_v3': 'inception_v3', 'inception_v4': 'inception_v4',
    'inception_resnet_v2': 'inception_resnet_v2', 'xception': 'legacy_xception',
}


@pytest.mark.parametrize('name', sorted(TIMM_FEATURES))
def test_feature_info_is_timms(name):
  timm = pytest.importorskip('timm')
  theirs = timm.create_model(TIMM_FEATURES[name], pretrained=False, features_only=True)
  info = feature_info(name)
  assert [d['channels'] for d in info] == theirs.feature_info.channels()
  assert [d['reduction'] for d in info] == theirs.feature_info.reduction()


def test_features_only_maps_are_the_backbones_and_train_mode_updates_statistics():
  """The maps are the backbone's own (the last equals forward_features'), the whole net's
  variables work too, and in training the BatchNorm statistics come back as from the model."""
  model = create_model('cifar_resnet20', num_classes=10)
  variables = initial_variables(model, _key(0), (32, 32, 3))
  x = jax.random.normal(_key(1), (4, 32, 32, 3), jnp.float32)
  extractor = create_model('cifar_resnet20', num_classes=10, features_only=True)
  maps = extractor.apply(variables, x)
  assert [m.shape for m in maps] == [(4, 32, 32, 16), (4, 32, 32, 16), (4, 16, 16, 32),
                                     (4, 8, 8, 64)]
  np.testing.assert_array_equal(maps[-1], model.apply(variables, x, train=False,
                                                      method='forward_features'))
  maps, state = extractor.apply(variables, x, train=True, mutable=['batch_stats'])
  _, want = model.apply(variables, x, train=True, mutable=['batch_stats'])
  jax.tree_util.tree_map(np.testing.assert_array_equal, state['batch_stats'],
                         want['batch_stats'])


def test_bad_requests_name_what_is_valid():
  with pytest.raises(ValueError, match=r'valid indices are -4\.\.3'):
    create_model('cifar_resnet20', num_classes=10, features_only=True, out_indices=(4,))
  with pytest.raises(ValueError, match='features_only=True'):
    create_model('cifar_resnet20', num_classes=10, out_indices=(1,))
  with pytest.raises(ValueError, match='num_classes must be >= 0'):
    create_model('cifar_resnet20', num_classes=-1)
  model = create_model('cifar_resnet20', num_classes=10)
  variables = initial_variables(model, _key(0), (32, 32, 3))
  with pytest.raises(ValueError, match="unknown part 'body'; valid: logits, features"):
    model.apply(variables, jnp.zeros((1, 32, 32, 3)), train=False, part='body')
