"""Activations, weight initialization and self-normalization: the registries, the config plumbing,
and the course notes' study of activation statistics through deep nets at initialization."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models, train
from resnet_jax.config import base_config
from resnet_jax.models import count_params, create_model, layers
from resnet_jax.models.mlp import hidden_outputs

# unsafe_rbg: far quicker to compile on CPU than threefry; its samples are as Gaussian.
KEY = jax.random.key(0, impl='unsafe_rbg')
# Klambauer et al. 2017, Eq. 2 / Sec. 3: the constants of SELU's fixed point (mean 0, var 1).
SELU_LAMBDA, SELU_ALPHA = 1.0507009873554805, 1.6732632423543772


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _normal_cdf(x):
  return 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _act(name, x):
  return np.asarray(layers.get_activation(name)(jnp.asarray(x, jnp.float32)))


X = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, 8.0], np.float32)


@pytest.mark.parametrize('name, want', [
    ('sigmoid', _sigmoid(X)),
    ('tanh', np.tanh(X)),
    ('relu', np.maximum(X, 0)),
    ('relu6', np.clip(X, 0, 6)),
    ('leaky_relu', np.where(X > 0, X, 0.01 * X)),  # Maas et al. 2013: slope 0.01
    ('leaky_relu:0.2', np.where(X > 0, X, 0.2 * X)),
    ('elu', np.where(X > 0, X, np.expm1(X))),  # Clevert et al. 2016, alpha = 1
    ('elu:0.5', np.where(X > 0, X, 0.5 * np.expm1(X))),
    ('selu', SELU_LAMBDA * np.where(X > 0, X, SELU_ALPHA * np.expm1(X))),
    ('gelu', X * _normal_cdf(X)),  # Hendrycks & Gimpel 2016: x * Phi(x), exactly
    ('swish', X * _sigmoid(X)),  # Ramachandran et al. 2017, beta = 1
])
def test_activation_defining_values(name, want):
  np.testing.assert_allclose(_act(name, X), want, rtol=1e-6, atol=1e-6)


def test_activation_constants():
  assert _act('selu', 1.0) == pytest.approx(1.0507, abs=1e-4)
  assert _act('selu', -30.0) == pytest.approx(-1.0507 * 1.67326, abs=1e-4)  # -lambda * alpha
  assert _act('leaky_relu:0.2', -5.0) == pytest.approx(-1.0)
  assert _act('leaky_relu', -5.0) == pytest.approx(-0.05)
  # The exact erf GELU, not the tanh approximation (which gives 0.841192 at 1).
  assert _act('gelu', 1.0) == pytest.approx(0.8413447, abs=2e-7)


@pytest.mark.parametrize('name, match', [
    ('swishy', r"unknown activation 'swishy'; valid: elu, elu:ALPHA, gelu, leaky_relu, "
               r'leaky_relu:SLOPE, prelu, prelu_shared, relu, relu6, scaled_tanh, selu, sigmoid, '
               r'silu, swish, tanh$'),
    ('leaky_relu:abc', 'SLOPE must be a finite number'),
    ('leaky_relu:nan', 'SLOPE must be a finite number'),
    ('tanh:0.2', r'only elu, leaky_relu take an argument.*valid:.*sigmoid'),
    (None, 'valid:.*relu'),
])
def test_bad_activation_names(name, match):
  with pytest.raises(ValueError, match=match):
    layers.get_activation(name)


def test_bad_init_names():
  with pytest.raises(ValueError, match="unknown kernel_init 'glorot'; valid: .*lecun, normal, "
                                       'normal:STD, .*xavier_normal'):
    layers.get_kernel_init('glorot')
  with pytest.raises(ValueError, match='must be > 0'):
    layers.get_kernel_init('normal:-0.1')
  with pytest.raises(ValueError, match='STD must be a finite number'):
    layers.get_kernel_init('normal:inf')


def test_init_aliases_are_the_same_initializers():
  inits = layers.KERNEL_INITS
  assert inits['kaiming'] is inits['kaiming_out']
  assert inits['xavier'] is inits['xavier_uniform']
  assert inits['normal_0.01'] is inits['normal']


# A conv kernel (kh, kw, in, out): fan_in = kh*kw*in = 576, fan_out = kh*kw*out = 1152.
CONV = (3, 3, 64, 128)
FAN_IN, FAN_OUT = math.prod(CONV[:-1]), math.prod(CONV[:-2]) * CONV[-1]


@pytest.mark.parametrize('name, variance', [
    ('kaiming_in', 2 / FAN_IN),  # He et al. 2015b, Eq. 10
    ('kaiming_out', 2 / FAN_OUT),  # He et al. 2015b, Eq. 14
    ('kaiming', 2 / FAN_OUT),
    ('kaiming_uniform', 2 / FAN_IN),
    ('xavier_uniform', 2 / (FAN_IN + FAN_OUT)),  # Glorot & Bengio 2010, Eq. 16
    ('xavier_normal', 2 / (FAN_IN + FAN_OUT)),
    ('lecun', 1 / FAN_IN),  # LeCun et al. 1998b
    ('normal:0.05', 0.05**2),
    ('normal', 0.01**2),
])
def test_init_variance_matches_the_fan_formula(name, variance):
  w = np.asarray(layers.get_kernel_init(name)(KEY, CONV, jnp.float32), np.float64)
  # 73,728 samples: the variance estimate's relative error is ~0.5% (normal) and less (uniform).
  assert abs(w.mean()) < 4 * math.sqrt(variance / w.size)
  assert w.var() == pytest.approx(variance, rel=0.03)
  if 'uniform' in name:  # uniform on [-sqrt(3 var), sqrt(3 var)]
    limit = math.sqrt(3 * variance)
    assert limit * 0.99 < np.abs(w).max() <= limit * (1 + 1e-6)


def _hidden(model, x, key=KEY):
  """Sown (pre, post)-activation outputs of a freshly initialized model on `x`, layer 1 first."""

  @jax.jit
  def run(key, x):
    variables = model.init({'params': key}, x, train=False)
    _, state = model.apply(variables, x, train=False, mutable=['intermediates'])
    return state['intermediates']

  inter = run(key, x)
  return tuple([np.asarray(a, np.float64) for a in hidden_outputs(inter, which)]
               for which in ('pre', 'post'))


# The course notes' study: unit-Gaussian inputs through 10 layers 512 wide, one fixed key.
GAUSSIAN = jax.random.normal(jax.random.key(1), (256, 28, 28, 1))
_study = functools.partial(create_model, 'mlp', num_classes=10, depth=10, width=512)


def test_tanh_small_normal_collapses_xavier_keeps_a_band():
  _, small = _hidden(_study(act='tanh', kernel_init='normal:0.01'), GAUSSIAN)
  # Each layer multiplies the std by ~0.01 * sqrt(512) = 0.23: layer 10 is ~4e-7.
  assert small[-1].std() < 1e-3
  _, xavier = _hidden(_study(act='tanh', kernel_init='xavier_normal'), GAUSSIAN)
  stds = [a.std() for a in xavier]
  # Glorot & Bengio 2010, Fig. 6: normalized init keeps every layer's tanh outputs alive.
  assert all(0.1 < s < 1.0 for s in stds), stds
  assert stds[-1] / stds[0] > 0.2


def test_relu_kaiming_keeps_the_variance_xavier_halves_it():
  def ratio(init):  # layer-10 / layer-1 variance of the pre-activations (He et al. 2015b, Eq. 7)
    pre, _ = _hidden(_study(act='relu', kernel_init=init), GAUSSIAN)
    return pre[-1].var() / pre[0].var()

  # He et al. 2015b, Sec. 2.2 and Fig. 2: variance 2/fan_in keeps the product over layers at 1.
  assert 0.5 <= ratio('kaiming_in') <= 2.0
  # Xavier's 1/fan (fan_in = fan_out) loses ReLU's half each layer: 2^-9 over 9 layers.
  assert 2**-9 / 2 < ratio('xavier_normal') < 2**-9 * 2
  _, small = _hidden(_study(act='relu', kernel_init='normal:0.01'), GAUSSIAN)
  assert small[-1].std() < 1e-6


def _mlp_config(**model):
  config = base_config()
  config.model.name = 'mlp'
  for k, v in model.items():
    config.model[k] = v
  return config


def test_selu_self_normalizes_without_batch_norm():
  config = _mlp_config(name='mlp_deep', act='selu')  # no init asked for
  model = train.build_model(config, num_classes=10)
  assert (model.depth, model.norm, model.kernel_init) == (32, 'none', 'lecun')
  x = jax.random.normal(jax.random.key(2), (256, 28, 28, 1))
  pre, post = _hidden(model, x)
  np.testing.assert_allclose(post[7], _act('selu', pre[7]), rtol=1e-5, atol=1e-6)
  # Klambauer et al. 2017, Theorem 1: (0, 1) is an attracting fixed point of SELU + LeCun init.
  for i, a in enumerate(post, 1):
    assert abs(a.mean()) < 0.1 and 0.8 < a.var() < 1.2, (i, a.mean(), a.var())

  # The same net with ReLU drifts: the variance halves each layer (He et al. 2015b, Eq. 9).
  relu = train.build_model(_mlp_config(name='mlp_deep', act='relu', init='lecun'), 10)
  _, post = _hidden(relu, x)
  assert post[-1].var() < 1e-6 and abs(post[0].mean()) > 0.3


def test_prelu_is_torchs_with_a_slope_per_channel_or_one_per_layer():
  import torch
  x = np.random.default_rng(0).standard_normal((2, 5, 5, 3)).astype(np.float32)
  for shared, slope in ((False, np.array([0.1, -0.3, 0.7], np.float32)),
                        (True, np.array(0.4, np.float32))):
    module = layers.PReLU(shared=shared)
    fresh = module.init(KEY, x)['params']['prelu_slope']
    assert fresh.shape == slope.shape and np.all(fresh == 0.25)  # He et al. 2015b, Sec. 2.1
    ours = np.asarray(module.apply({'params': {'prelu_slope': slope}}, x))
    theirs = torch.nn.functional.prelu(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                                       torch.from_numpy(slope.reshape(-1))).numpy()
    np.testing.assert_allclose(ours, theirs.transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-7)


def test_prelu_adds_one_parameter_per_channel_of_each_activation():
  # He et al. 2015b, Sec. 2.1: the extra parameters number the channels (one per layer: shared).
  base = count_params('lenet5')
  assert count_params('lenet5', act='prelu') - base == 6 + 16 + 120 + 84  # C1, C3, C5, F6
  assert count_params('lenet5', act='prelu_shared') - base == 4
  base = count_params('cifar_resnet20')  # The stem and two per block: 16 + 6 x (16, 32, 64).
  assert count_params('cifar_resnet20', act='prelu') - base == 16 + 6 * (16 + 32 + 64)


def test_prelu_slopes_get_no_weight_decay_and_are_learned(tmp_path):
  from resnet_jax import load_run, optim
  model = create_model('lenet5', num_classes=10, act='prelu')
  params = jax.eval_shape(lambda k: models.initial_variables(model, k, (32, 32, 1)), KEY)['params']
  for everything in (False, True):  # Not even with decay on BN scales and biases.
    flat = {'/'.join(k.key for k in path): decayed for path, decayed in
            jax.tree_util.tree_flatten_with_path(optim.decay_mask(params, everything))[0]}
    slopes = [name for name in flat if name.endswith('/prelu_slope')]
    assert len(slopes) == 4 and not any(flat[name] for name in slopes), flat
    assert flat['c5/kernel']
  config = base_config()  # LeNet-5 on the digits, 3 epochs.
  config.model.act, config.num_epochs = 'prelu', 3.0
  config.optimizer.decay_norm_and_bias = True
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['accuracy'] > 0.9
  _, variables, _ = load_run(str(tmp_path))
  learned = np.concatenate([np.ravel(v['prelu_slope']) for k, v in variables['params'].items()
                            if k.startswith('PReLU')])
  assert learned.size == 226 and np.abs(learned - 0.25).max() > 1e-3  # Moved by backprop.


def test_bias_init_sets_every_hidden_bias_but_the_classifiers_and_bn_offsets():
  config = base_config()
  config.model.name, config.model.bias_init = 'cifar_vgg16', 0.01  # VGG-16 with BatchNorm.
  config.dataset.update(source='digits', image_size=32)
  exp = train.setup(config)
  params = jax.device_get(exp.parallel.unreplicate(exp.state).params)
  flat = {'/'.join(k.key for k in path): v for path, v in
          jax.tree_util.tree_flatten_with_path(params)[0]}
  conv_biases = [k for k in flat if k.endswith('/bias') and k[:-4] + 'kernel' in flat]
  bn_offsets = [k for k in flat if k.endswith('/bias') and k[:-4] + 'scale' in flat]
  classifier = models.model_spec('cifar_vgg16')['classifier'] + '/bias'
  assert len(conv_biases) == 14 and len(bn_offsets) == 13 and classifier in conv_biases
  assert all(np.all(flat[k] == 0.01) for k in conv_biases if k != classifier)
  assert np.all(flat[classifier] == 0) and all(np.all(flat[k] == 0) for k in bn_offsets)
  config.model.bias_init = None  # Unset: the model's own zeros.
  params = jax.device_get(exp.parallel.unreplicate(train.setup(config).state).params)
  assert all(np.all(np.asarray(v) == 0) for path, v in jax.tree_util.tree_flatten_with_path(
      params)[0] if path[-1].key == 'bias')


def _kernel_variance(variables, layer):
  return float(np.var(np.asarray(variables['params'][layer]['kernel'], np.float64)))


def test_config_init_reaches_the_kernels():
  config = base_config()  # LeNet-5, whose own default is lecun
  config.model.init = 'xavier_normal'
  model = train.build_model(config, num_classes=10)
  assert model.kernel_init == 'xavier_normal'
  variables = jax.jit(lambda k: models.initial_variables(model, k, (32, 32, 1)))(KEY)
  # c5 is a 5x5x16 -> 120 conv: fan_in 400, fan_out 3000 (lecun would give 1/400 = 0.0025).
  assert _kernel_variance(variables, 'c5') == pytest.approx(2 / 3400, rel=0.05)


def test_selu_defaults_to_lecun_init():
  model = train.build_model(_mlp_config(act='selu'), num_classes=10)  # no init asked for
  assert model.kernel_init == 'lecun'
  variables = jax.jit(lambda k: models.initial_variables(model, k, (28, 28, 1)))(KEY)
  # dense2: 256 -> 256, 65,536 samples; the MLP's own kaiming_in would give 2/256.
  assert _kernel_variance(variables, 'dense2') == pytest.approx(1 / 256, rel=0.03)
  # Klambauer et al. 2017 pair SELU with LeCun normal; other activations keep the model's default,
  # and an init asked for wins.
  assert train.build_model(_mlp_config(act='relu'), 10).kernel_init == 'kaiming_in'
  assert train.build_model(_mlp_config(act='selu', init='xavier'), 10).kernel_init == 'xavier'


def test_selu_default_and_norm_switch_on_other_families():
  config = base_config()
  config.model.name = 'cifar_resnet20'  # kaiming (fan_out) by default
  config.model.act = 'selu'
  config.model.norm = 'none'
  model = train.build_model(config, num_classes=10)
  assert (model.act, model.kernel_init, model.norm) == ('selu', 'lecun', 'none')
  variables = jax.eval_shape(lambda k: models.initial_variables(model, k, (32, 32, 3)), KEY)
  assert variables['batch_stats'] == {}  # no BatchNorm left
  # A family without a kernel_init argument still takes act=selu.
  config.model.name, config.model.norm = 'mobilenet_v1', None
  assert train.build_model(config, num_classes=10).act == 'selu'


def test_mlp_parameter_counts_and_batch_norm():
  # 784*256 + 256, then (depth - 1) * (256*256 + 256), then 256*10 + 10.
  assert count_params('mlp') == 200_960 + 2 * 65_792 + 2_570 == 335_114
  assert count_params('mlp_deep') == 200_960 + 31 * 65_792 + 2_570
  # norm='batch': no hidden biases (BN's offset replaces them), plus a scale per hidden unit.
  assert count_params('mlp', norm='batch') == count_params('mlp') + 3 * 256
  model = create_model('mlp', num_classes=10, depth=2, width=64, norm='batch')
  x = 3.0 + 2.0 * GAUSSIAN[:64]

  @jax.jit
  def run(key, x):
    variables = model.init({'params': key}, x, train=False)
    _, state = model.apply(variables, x, train=True, mutable=['batch_stats', 'intermediates'])
    return variables, state

  variables, state = run(KEY, x)
  assert 'bias' not in variables['params']['dense1']
  pre = np.asarray(state['intermediates']['hidden2_pre'][0])
  # The sown pre-activation is the BN output: per unit, batch mean 0 and variance 1.
  np.testing.assert_allclose(pre.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(pre.var(0), 1.0, rtol=1e-2)
