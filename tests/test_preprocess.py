"""Preprocessing fitted on the training split: whitening, standardization, mean image, the colour
PCA, save/load, and the jittable on-device transform, on real MNIST and CIFAR-10 images."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED_DATA, extract_image_folder

from resnet_jax import train
from resnet_jax.config import base_config
from resnet_jax.data import load_split, preprocess
from resnet_jax.data.augment import EvalPreprocess
from resnet_jax.data.preprocess import Preprocessing, apply, fit, load_or_fit


@pytest.fixture(scope='module')
def cifar_folder(tmp_path_factory):
  """30 real CIFAR-10 JPEGs per class, laid out as train/<class>/<image>."""
  return extract_image_folder(SHARED_DATA / 'cifar10-train-jpeg.tar.gz',
                              tmp_path_factory.mktemp('cifar'), per_class=30)


def dataset_config(folder, **fields):
  config = base_config().dataset
  config.update(source=f'folder:{folder}', **fields)
  return config


def training_images(config) -> np.ndarray:
  """Every training image as the network sees it at evaluation (the view `fit` reads)."""
  split = load_split(config, 'train')
  view = EvalPreprocess(config.augment, config.image_size)
  return np.stack([view.map(split.records[i])['image'] for i in range(len(split))])


def transformed(prep: Preprocessing, images: np.ndarray) -> np.ndarray:
  return np.asarray(apply(prep.arrays(), jnp.asarray(images), jnp.float32), np.float64)


@pytest.mark.parametrize('kind', ['pca_whiten', 'zca_whiten'])
def test_whitened_training_data_has_identity_covariance(mnist_folder, kind):
  # 6x6 MNIST: 36 dimensions, 2,000 examples, smallest covariance eigenvalue ~1e-6.
  config = dataset_config(mnist_folder, image_size=6, preprocess=kind, whiten_epsilon=1e-8)
  images = training_images(config)
  prep = fit(load_split(config, 'train'), config)
  white = transformed(prep, images).reshape(len(images), -1)
  assert prep.whiten.shape == (36, 36) and prep.num_examples == 2000
  assert np.abs(white.mean(0)).max() < 1e-5
  assert np.abs(np.cov(white.T, bias=True) - np.eye(36)).max() < 0.02
  # With the default epsilon the covariance is exactly shrunk: lambda / (lambda + eps).
  config.whiten_epsilon = 0.01
  prep = fit(load_split(config, 'train'), config)
  white = transformed(prep, images).reshape(len(images), -1)
  flat = images.reshape(len(images), -1) / 255.0
  eigval, eigvec = np.linalg.eigh(np.cov(flat.T, bias=True))
  shrink = eigval / (eigval + 0.01)
  expected = np.diag(shrink[::-1]) if kind == 'pca_whiten' else eigvec @ np.diag(shrink) @ eigvec.T
  assert np.abs(np.cov(white.T, bias=True) - expected).max() < 1e-4
  if kind == 'zca_whiten':
    assert np.array_equal(prep.whiten, prep.whiten.T) or (
        np.abs(prep.whiten - prep.whiten.T).max() < 1e-6 * np.abs(prep.whiten).max())
    assert np.linalg.eigvalsh(prep.whiten.astype(np.float64)).min() > 0


def test_standardize_gives_mean_0_std_1_per_channel(cifar_folder):
  config = dataset_config(cifar_folder, preprocess='standardize')
  images = training_images(config)
  prep = fit(load_split(config, 'train'), config)
  out = transformed(prep, images).reshape(-1, 3)
  assert np.abs(out.mean(0)).max() < 1e-5 and np.abs(out.std(0) - 1).max() < 1e-5
  assert prep.mean.shape == prep.std.shape == (3,)


def test_mean_image_subtraction_centres_every_pixel(mnist_folder):
  config = dataset_config(mnist_folder, image_size=12, preprocess='mean', std=(64.0,))
  images = training_images(config)
  prep = fit(load_split(config, 'train'), config)
  assert prep.mean.shape == (12, 12, 1)
  out = transformed(prep, images)
  assert np.abs(out.mean(0)).max() < 1e-5
  # The scale stays config.dataset.std's: x - mean image, divided by 64.
  assert np.allclose(out[0], (images[0] - prep.mean.astype(np.float64)) / 64.0, atol=1e-5)
  # Cutout's fill is what maps to (nearly) 0: the mean image, rounded.
  assert np.abs(transformed(prep, prep.zero_image((12, 12, 1))[None])).max() <= 0.5 / 64


def test_fixed_reads_no_data_and_is_todays_normalization(mnist_folder):
  config = dataset_config(mnist_folder, mean=(33.3,), std=(78.6,))
  prep = fit(load_split(config, 'train'), config)
  assert prep.num_examples == 0 and prep.lighting is None
  images = training_images(config)[:8]
  assert np.allclose(transformed(prep, images), (images - 33.3) / 78.6, atol=1e-5)


def test_colour_pca_is_the_eigendecomposition_of_the_pixel_covariance(cifar_folder):
  config = dataset_config(cifar_folder, augment='pad_crop,flip,pca_lighting')
  prep = fit(load_split(config, 'train'), config)
  pixels = training_images(config).reshape(-1, 3) / 255.0
  eigval, eigvec = np.linalg.eigh(np.cov(pixels.T, bias=True))
  assert np.allclose(prep.eigval, eigval[::-1], rtol=1e-4)
  assert np.abs(np.abs(prep.eigvec.T @ eigvec[:, ::-1]) - np.eye(3)).max() < 1e-4
  assert prep.eigval[0] > 10 * prep.eigval[1]  # Brightness dominates natural images' colours.


def test_fit_examples_caps_with_a_fixed_subset(mnist_folder):
  config = dataset_config(mnist_folder, image_size=10, preprocess='standardize', fit_examples=500)
  split = load_split(config, 'train')
  a, b = fit(split, config), fit(split, config, num_workers=1)
  assert a.num_examples == 500
  assert np.array_equal(a.mean, b.mean) and np.array_equal(a.std, b.std)  # Deterministic.
  config.fit_examples = 10000
  assert not np.array_equal(fit(split, config).mean, a.mean)


@pytest.mark.parametrize('kind', ['fixed', 'mean', 'standardize', 'zca_whiten'])
def test_save_load_round_trips_bit_exactly(mnist_folder, tmp_path, kind):
  config = dataset_config(mnist_folder, image_size=8, preprocess=kind, fit_examples=300,
                          augment='pca_lighting')
  prep = fit(load_split(config, 'train'), config)
  prep.save(str(tmp_path / 'preprocess.npz'))
  loaded = Preprocessing.load(str(tmp_path / 'preprocess.npz'))
  assert loaded.kind == kind and loaded.num_examples == prep.num_examples == 300
  for name in ('mean', 'std', 'whiten', 'eigval', 'eigvec'):
    ours, theirs = getattr(prep, name), getattr(loaded, name)
    assert (ours is None and theirs is None) or (
        ours.dtype == theirs.dtype and np.array_equal(ours, theirs)), name


def test_load_or_fit_saves_once_then_loads_and_checks_the_kind(mnist_folder, tmp_path):
  config = dataset_config(mnist_folder, image_size=8, preprocess='standardize', fit_examples=200)
  path = str(tmp_path / 'run' / 'preprocess.npz')
  first = load_or_fit(path, load_split(config, 'train'), config)
  again = load_or_fit(path, None, config)  # Evaluation: no training split needed.
  assert np.array_equal(first.mean, again.mean) and np.array_equal(first.std, again.std)
  config.preprocess = 'mean'
  with pytest.raises(ValueError, match="config.dataset.preprocess is 'mean' but .* 'standardize'"):
    load_or_fit(path, None, config)


def test_apply_is_jittable_with_the_matrix_as_an_argument(mnist_folder):
  config = dataset_config(mnist_folder, image_size=8, preprocess='zca_whiten', fit_examples=300)
  prep = fit(load_split(config, 'train'), config)
  images = jnp.asarray(training_images(config)[:16])
  jaxpr = jax.make_jaxpr(lambda arrays, x: apply(arrays, x, jnp.bfloat16))(prep.arrays(), images)
  assert not jaxpr.consts  # The whitening matrix is an input, not a baked-in constant.
  jitted = jax.jit(apply, static_argnums=2)(prep.arrays(), images, jnp.float32)
  assert np.allclose(jitted, apply(prep.arrays(), images, jnp.float32), atol=1e-5)
  assert jax.jit(apply, static_argnums=2)(prep.arrays(), images, jnp.bfloat16).dtype == jnp.bfloat16


def test_whitening_refuses_large_images_naming_the_field(cifar_folder):
  config = dataset_config(cifar_folder, image_size=64, preprocess='zca_whiten')
  with pytest.raises(ValueError, match=r"config.dataset.preprocess 'zca_whiten'.*image_size 64 "
                                       r'gives 64x64x3 = 12288'):
    fit(load_split(config, 'train'), config)


def test_check_config_names_bad_preprocessing_fields():
  config = base_config()
  config.dataset.preprocess = 'whiten'
  with pytest.raises(ValueError, match="config.dataset.preprocess 'whiten' is not one of"):
    train.check(config)
  config.dataset.preprocess, config.dataset.whiten_epsilon = 'pca_whiten', 0.0
  with pytest.raises(ValueError, match='config.dataset.whiten_epsilon must be > 0'):
    train.check(config)
  assert preprocess.needs_fit(base_config().dataset) is False
