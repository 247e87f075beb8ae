"""Ciresan et al. 2010's deep MLPs (Table 1) and their deformations: the affine and elastic warps
of data/augment.py (NumPy) and data/on_device.py (jax), Simard et al. 2003, Sec. 2."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.data import augment, on_device
from resnet_jax.data.augment import AugmentOptions, TrainAugment, parse_augment
from resnet_jax.models import (
  abstract_variables,
  count_params,
  create_model,
  initial_variables,
  layers,
)

SIZE = 29
# Ciresan et al. 2010, Table 1: weights in millions, as printed (two decimals, cut).
TABLE_1 = {'ciresan_mlp1': 1.34, 'ciresan_mlp2': 3.26, 'ciresan_mlp3': 6.69,
           'ciresan_mlp4': 12.11, 'ciresan_mlp5': 8.86}
OPTIONS = AugmentOptions.from_config()


def _digit() -> np.ndarray:
  """An asymmetric uint8 29x29x1 'digit': a thick L with a dot, off centre."""
  image = np.zeros((SIZE, SIZE, 1), np.uint8)
  image[6:22, 9:13] = 255
  image[18:22, 9:21] = 180
  image[6:9, 17:20] = 90
  return image


def _options(**fields) -> AugmentOptions:
  return AugmentOptions(**{**OPTIONS.__dict__, **fields})


@pytest.mark.parametrize('name', sorted(TABLE_1))
def test_weight_counts_are_table_one_cut_to_two_decimals(name):
  # 841 inputs (29x29) and biases: ID 1 is 842 * 1000 + 1001 * 500 + 501 * 10 = 1,347,510.
  assert count_params(name) // 10_000 == round(TABLE_1[name] * 100)


def test_exact_counts():
  assert [count_params(f'ciresan_mlp{i}') for i in range(1, 6)] == [
      1_347_510, 3_269_510, 6_692_010, 12_115_010, 8_860_010]


def test_scaled_tanh_and_uniform_init():
  act = layers.get_activation('scaled_tanh')
  np.testing.assert_allclose(act(jnp.asarray([0.0, 1.0, -1.0])), [0.0, 1.0, -1.0], atol=2e-4)
  # ciresan_mlp1's layers and init, at widths small enough to initialise quickly.
  model = create_model('ciresan_mlp1', num_classes=10, widths=(200, 50))
  params = initial_variables(model, jax.random.key(0), (SIZE, SIZE, 1))['params']
  assert [k for k in params] == ['dense1', 'dense2', 'head']
  assert params['dense1']['kernel'].shape == (SIZE * SIZE, 200)
  for leaf in jax.tree_util.tree_leaves(params):  # Sec. 3: weights and biases in [-0.05, 0.05].
    assert float(jnp.max(jnp.abs(leaf))) <= 0.05
  kernel = np.asarray(params['dense1']['kernel'])
  assert abs(kernel.std() - 0.05 / np.sqrt(3)) < 1e-3  # U(-b, b) has std b / sqrt(3).
  logits = model.apply({'params': params}, jnp.ones((2, SIZE, SIZE, 1)), train=False)
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))


def test_nine_layer_net_has_nine_hidden_layers_of_1000():
  model = create_model('ciresan_mlp5', num_classes=10)
  params = abstract_variables(model, (SIZE, SIZE, 1))['params']
  assert [params[f'dense{i}']['kernel'].shape[1] for i in range(1, 10)] == [1000] * 9
  assert 'dense10' not in params


def test_ops_parse_and_run_in_order():
  assert parse_augment('ciresan') == ('affine', 'elastic')
  assert parse_augment('elastic,pad_crop,affine,flip') == ('pad_crop', 'affine', 'elastic', 'flip')
  assert on_device.unsupported_ops('ciresan') == []


@pytest.mark.parametrize('backend', ['numpy', 'jax'])
def test_identity_at_zero_magnitude(backend):
  image = _digit()
  lib = augment if backend == 'numpy' else on_device
  grid = lib.affine_grid(augment.identity_grid(SIZE, SIZE),
                         lib.affine_source_matrix(0.0, 0.0, 1.0, 1.0))
  noise = np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE)).astype(np.float32)
  grid = grid + lib.elastic_displacement(noise, 5.0, 0.0)  # alpha = 0: no displacement.
  np.testing.assert_allclose(np.asarray(lib.bilinear_sample(image, grid)), image, atol=1e-4)
  # The whole op too, with every range shrunk to the identity.
  o = _options(affine_angle=0.0, affine_shear=0.0, affine_scale_x=(1.0, 1.0),
               affine_scale_y=(1.0, 1.0), elastic_alpha=(0.0, 0.0))
  if backend == 'numpy':
    out = augment.warp(image, np.random.default_rng(1), o, affine=True, elastic=True)
  else:
    warp = jax.jit(lambda x, k: on_device.warp(x, k, o, affine=True, elastic=True))
    out = warp(jnp.asarray(image), jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(out), image)


@pytest.mark.parametrize('backend', ['numpy', 'jax'])
def test_rotation_by_90_degrees_is_rot90(backend):
  image = _digit()
  lib = augment if backend == 'numpy' else on_device
  grid = lib.affine_grid(augment.identity_grid(SIZE, SIZE),
                         lib.affine_source_matrix(90.0, 0.0, 1.0, 1.0))
  np.testing.assert_allclose(np.asarray(lib.bilinear_sample(image, grid)), np.rot90(image),
                             atol=1e-3)


def test_numpy_and_jax_warps_agree_for_the_same_draws():
  image, noise = _digit(), np.random.default_rng(2).uniform(-1, 1, (2, SIZE, SIZE))
  noise = noise.astype(np.float32)
  matrix = augment.affine_source_matrix(12.0, 5.0, 1.1, 0.9)
  np.testing.assert_allclose(on_device.affine_source_matrix(12.0, 5.0, 1.1, 0.9), matrix,
                             atol=1e-6)
  for sigma in (0.7, 5.5):
    np.testing.assert_allclose(on_device.gaussian_matrix(SIZE, sigma),
                               augment.gaussian_matrix(SIZE, sigma), atol=1e-6)
  grids = [lib.affine_grid(augment.identity_grid(SIZE, SIZE), matrix)
           + lib.elastic_displacement(noise, 5.5, 37.0) for lib in (augment, on_device)]
  np.testing.assert_allclose(grids[1], grids[0], atol=1e-4)
  np.testing.assert_allclose(on_device.bilinear_sample(image, grids[0]),
                             augment.bilinear_sample(image, grids[0]), atol=1e-3)


def test_displacement_is_smoother_and_smaller_for_larger_sigma():
  noise = np.random.default_rng(3).uniform(-1, 1, (2, 64, 64)).astype(np.float32)
  stds, roughness = [], []
  for sigma in (1.0, 2.0, 4.0, 8.0):
    field = augment.elastic_displacement(noise, sigma, 1.0)[:, 16:48, 16:48]  # Away from borders.
    stds.append(field.std())
    roughness.append(np.abs(np.diff(field, axis=2)).mean() / field.std())
  assert all(a > b for a, b in zip(stds, stds[1:])), stds
  assert all(a > b for a, b in zip(roughness, roughness[1:])), roughness
  # A normalised Gaussian of std s keeps 1 / (2 sqrt(pi) s) of the noise's variance per axis:
  # std ~ (1 / sqrt(3)) / (2 sqrt(pi) s).
  np.testing.assert_allclose(stds[2], 1 / np.sqrt(3) / (2 * np.sqrt(np.pi) * 4.0), rtol=0.2)


def test_mass_is_roughly_preserved_and_the_defaults_move_pixels():
  image = np.zeros((SIZE, SIZE, 1), np.uint8)
  image[7:22, 10:19] = 200  # Centred, so the warps rarely push ink out of the frame.
  rng = np.random.default_rng(4)
  outs = [augment.warp(image, rng, OPTIONS, affine=False, elastic=True) for _ in range(200)]
  masses = np.array([o.astype(np.float64).sum() for o in outs]) / image.sum()
  # Each image stretches or squeezes its ink (Simard's fields are not divergence-free), by up to
  # ~40% here; on average the mass stays.
  assert abs(masses.mean() - 1) < 0.05 and 0.5 < masses.min() and masses.max() < 1.7, masses
  assert all(np.abs(o.astype(int) - image).max() > 50 for o in outs)  # Something moved.
  keys = jax.random.split(jax.random.key(0), 200)
  device = jax.jit(jax.vmap(lambda k: on_device.warp(jnp.asarray(image), k, OPTIONS,
                                                     affine=False, elastic=True)))(keys)
  device_masses = np.asarray(device, np.float64).sum(axis=(1, 2, 3)) / image.sum()
  # One distribution, other draws: means within ~4 standard errors (std ~0.17 / sqrt(200)).
  assert abs(device_masses.mean() - masses.mean()) < 0.06, (device_masses.mean(), masses.mean())
  assert abs(device_masses.std() - masses.std()) < 0.4 * masses.std()
  # Same distribution: the mean absolute change per image agrees within a few percent.
  host_change = np.mean([np.abs(o.astype(int) - image).mean() for o in outs])
  device_change = np.abs(np.asarray(device, int) - image).mean()
  assert abs(host_change - device_change) < 0.25 * host_change, (host_change, device_change)


def test_same_key_same_output_different_key_different_output():
  image = _digit()
  host = TrainAugment('ciresan', SIZE, OPTIONS)
  element = {'image': image, 'label': 3}
  first = host.random_map(element, np.random.default_rng(7))['image']
  np.testing.assert_array_equal(host.random_map(element, np.random.default_rng(7))['image'], first)
  assert not np.array_equal(host.random_map(element, np.random.default_rng(8))['image'], first)
  device = on_device.DeviceAugment('ciresan', OPTIONS)
  fn = jax.jit(device)
  a, b = fn(jnp.asarray(image), jax.random.key(7)), fn(jnp.asarray(image), jax.random.key(7))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, fn(jnp.asarray(image), jax.random.key(8)))
  assert a.dtype == jnp.uint8 and a.shape == image.shape


def test_new_ops_leave_the_older_ops_draws_alone():
  # The key of each op is its place in KEYED_OPS; the older ops come first, as before.
  assert on_device.KEYED_OPS[:7] == ('scale', 'random_resized_crop', 'pad_crop', 'flip',
                                     'colour_jitter', 'pca_lighting', 'cutout')
  image = jnp.asarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), np.uint8))
  out = on_device.DeviceAugment('pad_crop,flip', _options(pad=2))(image, jax.random.key(5))
  keys = jax.random.split(jax.random.key(5), 7)  # The split before affine and elastic existed.
  top, left = jax.random.randint(keys[2], (2,), 0, 5)
  expected = on_device.flip(on_device.pad_crop(image, top, left, 2),
                            jax.random.bernoulli(keys[3]))
  np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize('field,value,rule', [
    ('elastic_sigma', (6.0, 5.0), '0 < low <= high'), ('elastic_alpha', (-1.0, 2.0), '0 <= low'),
    ('affine_scale_x', (0.0, 1.1), '0 < low <= high'), ('affine_angle', -5.0, '>= 0')])
def test_bad_distortion_fields_are_named(field, value, rule):
  from resnet_jax import data
  from resnet_jax.config import base_config
  config = base_config()
  config.dataset[field] = value
  with pytest.raises(ValueError, match=f'config.dataset.{field} must .*{re.escape(rule)}'):
    data.check_dataset_config(config.dataset)


def test_one_sgd_step_on_the_smallest_net_lowers_its_loss():
  model = create_model('ciresan_mlp1', num_classes=10)
  variables = initial_variables(model, jax.random.key(0), (29, 29, 1))
  x = jax.random.uniform(jax.random.key(1), (8, 29, 29, 1), minval=-1.0, maxval=1.0)
  y = jnp.arange(8) % 10

  def loss(params):
    logits = model.apply({'params': params}, x, train=True)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), y])

  value, grads = jax.jit(jax.value_and_grad(loss))(variables['params'])
  assert all(np.abs(g).max() > 0 for g in jax.tree_util.tree_leaves(grads))
  stepped = jax.tree.map(lambda p, g: p - 0.01 * g, variables['params'], grads)
  assert loss(stepped) < value
