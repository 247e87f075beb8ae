"""Input preprocessing fitted on the training split: mean image, per-channel standardization,
PCA and ZCA whitening, and the RGB principal components of AlexNet's lighting noise.

`fit(split, config.dataset)` streams (a fixed subset of) the training split through its
evaluation view, in chunks, and returns a `Preprocessing`; `save`/`load` keep it with the run
(an .npz, no pickle) so evaluation and resumed runs use the same transform. On device,
`apply(preprocessing.arrays(), images_uint8, dtype)` is a pure, jittable function of arrays.

Kinds (`config.dataset.preprocess`):
  fixed        (x - config.dataset.mean) / config.dataset.std; nothing is fitted.
  mean         (x - the training split's mean image) / config.dataset.std (AlexNet, Sec. 2).
  standardize  (x - mean) / std per channel, over every pixel of the training split.
  pca_whiten   (x/255 - mean) @ U (Lambda + eps)^-1/2: decorrelated, unit-variance coefficients
               of the flattened image, largest component first (the layout of an image is lost:
               for fully connected models).
  zca_whiten   (x/255 - mean) @ U (Lambda + eps)^-1/2 U^T: the whitened image closest to the
               original, still an image (Krizhevsky 2009, App. A; Coates & Ng 2011).
"""
from __future__ import annotations

import dataclasses

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from resnet_jax.data.augment import EvalPreprocess, parse_augment
from resnet_jax.data.sources import Split, Subset, to_iter_dataset

PREPROCESSING = ('fixed', 'mean', 'standardize', 'pca_whiten', 'zca_whiten')
WHITENING = ('pca_whiten', 'zca_whiten')
# A D x D whitening matrix costs D^2 floats and D^2 multiply-adds per image: 4096 admits
# 32x32x3 (CIFAR, 3072), 28x28 and 64x64 grey; 64x64x3 would be a 12288^2 matrix (600 MB).
MAX_WHITEN_DIM = 4096
FIT_CHUNK = 500  # Images per chunk while fitting: bounds the memory of the streamed statistics.


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessing:
  """A fitted input transform, and the colour PCA of the training split.

  mean, std: broadcast against HWC images on the 0..255 scale (whitening: the mean image and 255,
  so its input is on the 0..1 scale); whiten: the D x D matrix of the whitening kinds, else None;
  eigval, eigvec: eigenvalues (descending, 0..1 scale) and eigenvectors (columns) of the covariance
  of the training split's pixel values (C x C), or None when nothing needed them.
  """
  kind: str
  mean: np.ndarray
  std: np.ndarray
  whiten: np.ndarray | None = None
  eigval: np.ndarray | None = None
  eigvec: np.ndarray | None = None
  num_examples: int = 0  # Training examples the statistics come from (0: nothing fitted).

  def arrays(self) -> dict[str, np.ndarray]:
    """What `apply` takes: pass these as arguments of the jitted step, not as constants."""
    arrays = {'mean': self.mean, 'std': self.std}
    if self.whiten is not None:
      arrays['whiten'] = self.whiten
    return arrays

  @property
  def lighting(self) -> tuple[np.ndarray, np.ndarray] | None:
    """(eigval, eigvec) for the pca_lighting augmentation, or None when not fitted."""
    return None if self.eigval is None else (self.eigval, self.eigvec)

  def zero_image(self, image_shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 HWC image closest to what this transform maps to 0 (the mean, rounded): what
    cutout writes, DeVries & Taylor's zero after normalisation."""
    return np.broadcast_to(np.round(np.clip(self.mean, 0, 255)).astype(np.uint8),
                           image_shape).copy()

  def save(self, path: str) -> None:
    """Writes an .npz (no pickle), atomically: a temporary file, then a rename."""
    arrays = {'kind': np.array(self.kind), 'num_examples': np.array(self.num_examples),
              **{name: getattr(self, name) for name in ('mean', 'std', 'whiten', 'eigval', 'eigvec')
                 if getattr(self, name) is not None}}
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f'{path.name}.tmp'
    with tmp.open('wb') as f:
      np.savez(f, **arrays)
    tmp.replace(path)

  @classmethod
  def load(cls, path: str) -> Preprocessing:
    with epath.Path(path).open('rb') as f, np.load(f, allow_pickle=False) as z:
      get = lambda name: np.array(z[name]) if name in z.files else None
      return cls(kind=str(z['kind']), mean=get('mean'), std=get('std'), whiten=get('whiten'),
                 eigval=get('eigval'), eigvec=get('eigvec'), num_examples=int(z['num_examples']))


def apply(arrays: dict, images: jax.Array, dtype) -> jax.Array:
  """uint8 NHWC images -> the network's input in `dtype`: (x - mean) / std, then for the
  whitening kinds the flattened image times the whitening matrix (in full float32 precision)."""
  x = (images.astype(jnp.float32) - jnp.asarray(arrays['mean'], jnp.float32)) / jnp.asarray(
      arrays['std'], jnp.float32)
  if 'whiten' in arrays:
    flat = x.reshape(x.shape[0], -1)
    x = jnp.matmul(flat, jnp.asarray(arrays['whiten'], jnp.float32),
                   precision=jax.lax.Precision.HIGHEST).reshape(x.shape)
  return x.astype(dtype)


def check_preprocess(dataset_config) -> None:
  """Rejects a `config.dataset.preprocess` no run could use, naming the field."""
  d = dataset_config
  if d.preprocess not in PREPROCESSING:
    raise ValueError(f"config.dataset.preprocess '{d.preprocess}' is not one of {PREPROCESSING}")
  if d.preprocess in WHITENING and not d.whiten_epsilon > 0:
    raise ValueError(f'config.dataset.whiten_epsilon must be > 0, got {d.whiten_epsilon}')
  if d.fit_examples < 1:
    raise ValueError(f'config.dataset.fit_examples must be >= 1, got {d.fit_examples}')


def needs_fit(dataset_config) -> bool:
  """Whether the run needs statistics of the training split (else `fit` reads no data)."""
  return (dataset_config.preprocess != 'fixed'
          or 'pca_lighting' in parse_augment(dataset_config.augment))


def fit_indices(num_records: int, cap: int) -> np.ndarray:
  """The examples the statistics come from: all, or a fixed random `cap` of them (any seed)."""
  if num_records <= cap:
    return np.arange(num_records)
  return np.sort(np.random.default_rng(0).choice(num_records, cap, replace=False))


def _eigh_descending(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Eigenvalues (descending, >= 0) and eigenvectors, each with its largest entry positive (the
  sign LAPACK picks is arbitrary; this makes the result the same on every machine)."""
  eigval, eigvec = np.linalg.eigh(cov)
  eigval, eigvec = np.maximum(eigval[::-1], 0.0), eigvec[:, ::-1]
  rows = np.argmax(np.abs(eigvec), axis=0)
  return eigval, eigvec * np.sign(eigvec[rows, np.arange(eigvec.shape[1])])


def whitening_matrix(cov: np.ndarray, kind: str, epsilon: float) -> np.ndarray:
  """PCA: U (Lambda + eps)^-1/2; ZCA: U (Lambda + eps)^-1/2 U^T (row vectors times it)."""
  eigval, eigvec = _eigh_descending(cov)
  pca = eigvec / np.sqrt(eigval + epsilon)
  return pca if kind == 'pca_whiten' else pca @ eigvec.T


def fit(split: Split, dataset_config, *, num_workers: int | None = None) -> Preprocessing:
  """The preprocessing `config.dataset.preprocess` asks for, fitted on `split` (the training
  split) as the evaluation view shows it, plus the colour PCA when pca_lighting needs it.

  Reads at most `config.dataset.fit_examples` examples (a fixed subset), in chunks, through
  Grain (`num_workers` processes; None means config.dataset.num_workers). Deterministic.
  """
  d = dataset_config
  check_preprocess(d)
  kind = d.preprocess
  fixed = Preprocessing(kind, np.asarray(d.mean, np.float32), np.asarray(d.std, np.float32))
  if not needs_fit(d):
    return fixed
  view = EvalPreprocess(d.augment, d.image_size)
  height, width, channels = view.map(split.records[0])['image'].shape
  dim = height * width * channels
  if kind in WHITENING and dim > MAX_WHITEN_DIM:
    raise ValueError(
        f"config.dataset.preprocess '{kind}' whitens the flattened image: config.dataset."
        f'image_size {d.image_size} gives {height}x{width}x{channels} = {dim} dimensions, more '
        f'than {MAX_WHITEN_DIM} (a {dim}x{dim} matrix); use a smaller image_size or '
        "'standardize' / 'mean'")
  indices = fit_indices(len(split), d.fit_examples)
  dataset = (grain.MapDataset.source(Subset(split.records, indices)).map(view)
             .batch(FIT_CHUNK, drop_remainder=False))
  workers = d.num_workers if num_workers is None else num_workers
  count, image_sum = 0, np.zeros((height, width, channels))
  pixel_sum, pixel_outer = np.zeros(channels), np.zeros((channels, channels))
  flat_outer = np.zeros((dim, dim)) if kind in WHITENING else None
  for batch in to_iter_dataset(dataset, workers):
    x = batch['image'].astype(np.float64) / 255.0  # Statistics on the 0..1 scale.
    count += len(x)
    image_sum += x.sum(0)
    pixels = x.reshape(-1, channels)
    pixel_sum += pixels.sum(0)
    pixel_outer += pixels.T @ pixels
    if flat_outer is not None:
      flat = x.reshape(len(x), dim)
      flat_outer += flat.T @ flat
  num_pixels = count * height * width
  pixel_mean = pixel_sum / num_pixels
  pixel_cov = pixel_outer / num_pixels - np.outer(pixel_mean, pixel_mean)
  eigval, eigvec = _eigh_descending(pixel_cov)
  mean_image = image_sum / count
  f32 = lambda a: np.asarray(a, np.float32)
  stats = dict(eigval=f32(eigval), eigvec=f32(eigvec), num_examples=count)
  logging.info('Preprocessing %s fitted on %d examples of %s.', kind, count, split.name)
  if kind == 'fixed':
    return dataclasses.replace(fixed, **stats)
  if kind == 'mean':
    return Preprocessing(kind, f32(255.0 * mean_image), fixed.std, **stats)
  if kind == 'standardize':
    std = np.sqrt(np.maximum(np.diag(pixel_cov), 0.0))
    return Preprocessing(kind, f32(255.0 * pixel_mean), f32(255.0 * std), **stats)
  mean_flat = mean_image.reshape(dim)
  cov = flat_outer / count - np.outer(mean_flat, mean_flat)
  whiten = whitening_matrix(cov, kind, d.whiten_epsilon)
  return Preprocessing(kind, f32(255.0 * mean_image), f32([255.0]), whiten=f32(whiten), **stats)


def load_or_fit(path: str | None, split: Split | None, dataset_config, *,
                num_workers: int | None = None) -> Preprocessing:
  """The run's preprocessing: loaded from `path` when a previous run (or this one, before a
  restart) saved it there, else fitted on `split` and saved there (by process 0); with no
  `path` (a run without a workdir), fitted and kept in memory only."""
  d = dataset_config
  check_preprocess(d)
  if path is None:
    if split is None and needs_fit(d):
      raise ValueError(f"config.dataset.preprocess '{d.preprocess}' (or augment '{d.augment}') "
                       'needs the training split or a workdir holding preprocess.npz')
    return fit(split, d, num_workers=num_workers)
  if epath.Path(path).exists():
    loaded = Preprocessing.load(path)
    if loaded.kind != d.preprocess:
      raise ValueError(f"config.dataset.preprocess is '{d.preprocess}' but {path} holds "
                       f"'{loaded.kind}' from an earlier run; use the same value or a new workdir")
    if 'pca_lighting' in parse_augment(d.augment) and loaded.lighting is None:
      raise ValueError(f"config.dataset.augment '{d.augment}' needs the colour PCA, which {path} "
                       'does not hold; use a new workdir')
    return loaded
  if split is None:
    if needs_fit(d):
      raise FileNotFoundError(f"config.dataset.preprocess '{d.preprocess}' needs statistics of "
                              f'the training split, and {path} does not exist')
    return fit(split, d)
  preprocessing = fit(split, d, num_workers=num_workers)
  if jax.process_index() == 0:
    preprocessing.save(path)
  return preprocessing
