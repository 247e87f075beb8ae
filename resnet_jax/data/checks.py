"""`config.dataset`'s values, checked where the data is built, before anything compiles."""
from __future__ import annotations

from resnet_jax.data.augment import parse_augment
from resnet_jax.data.on_device import check_on_device
from resnet_jax.data.preprocess import check_preprocess


def check_dataset_config(d) -> None:
  """Rejects a `config.dataset` no run could use, naming the field and what would be valid."""
  if len(d.mean) != len(d.std):
    raise ValueError('config.dataset.mean and config.dataset.std need the same number of values, '
                     f'got {d.mean} and {d.std}')
  if 'scale' in parse_augment(d.augment) and d.scale_range[0] < d.image_size:
    raise ValueError(f'config.dataset.scale_range {d.scale_range} must start at '
                     f'config.dataset.image_size ({d.image_size}) or above')
  check_preprocess(d)
  bounds = {'scale_range': (lambda lo, hi: 1 <= lo <= hi, '1 <= low <= high'),
            'crop_scale': (lambda lo, hi: 0 < lo <= hi <= 1, '0 < low <= high <= 1'),
            'crop_ratio': (lambda lo, hi: 0 < lo <= hi, '0 < low <= high'),
            'affine_scale_x': (lambda lo, hi: 0 < lo <= hi, '0 < low <= high'),
            'affine_scale_y': (lambda lo, hi: 0 < lo <= hi, '0 < low <= high'),
            'elastic_sigma': (lambda lo, hi: 0 < lo <= hi, '0 < low <= high'),
            'elastic_alpha': (lambda lo, hi: 0 <= lo <= hi, '0 <= low <= high')}
  for field, (valid, rule) in bounds.items():
    if len(d[field]) != 2 or not valid(*d[field]):
      raise ValueError(f'config.dataset.{field} must be (low, high) with {rule}, got {d[field]}')
  for field in ('pad', 'jitter_brightness', 'jitter_contrast', 'jitter_saturation',
                'pca_lighting_std', 'affine_angle', 'affine_shear'):
    if d[field] < 0:
      raise ValueError(f'config.dataset.{field} must be >= 0, got {d[field]}')
  if d.cutout_size < 1:
    raise ValueError(f'config.dataset.cutout_size must be >= 1, got {d.cutout_size}')
  check_on_device(d)
