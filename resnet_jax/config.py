"""The fields every training config has, with defaults; experiment files start from `base_config()`.

The returned ConfigDict is locked: a misspelt field in an experiment file or on the command line
(`--config.optimizer.momentun=0.9`) is an error naming it, never a silent default.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

DTYPES = ('float32', 'bfloat16')
PARALLELISM = ('shard_map', 'pmap')


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_epochs = 10.0
  c.batch_size = 128  # Global, over every device of every host.
  c.dtype = 'float32'  # Computation dtype; parameters and optimizer state stay float32.
  c.parallelism = 'shard_map'  # Or 'pmap': the same per-device step, mapped by jax.pmap.
  c.label_smoothing = 0.0

  c.model = ml_collections.ConfigDict()
  c.model.name = 'lenet5'
  c.model.sync_bn = False  # True: BatchNorm statistics over the global batch (cross-replica).
  # Overrides passed to create_model when set; unset means the registered model's default.
  c.model.act = config_dict.placeholder(str)
  c.model.zero_init_residual = config_dict.placeholder(bool)
  c.model.dropout_rate = config_dict.placeholder(float)

  c.dataset = ml_collections.ConfigDict()
  c.dataset.source = 'digits'  # 'digits' | 'tfds:NAME' | 'folder:PATH'
  c.dataset.data_dir = ''  # TFDS data_dir (a local path or a bucket); '' means TFDS's default.
  c.dataset.eval_split = 'test'
  c.dataset.val_fraction = 0.0  # Share of 'train' carved off as 'validation' when none is stored.
  c.dataset.image_size = 32
  c.dataset.augment = 'none'  # 'none' | 'cifar' | 'imagenet'
  c.dataset.mean = (127.5,)  # Per channel, on the 0..255 scale; one value broadcasts.
  c.dataset.std = (127.5,)
  c.dataset.num_workers = 0  # Grain worker processes for decoding and augmentation.
  c.dataset.skip_corrupt = False  # Image folders: check every file first, drop and count bad ones.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'sgd'  # 'sgd' | 'adamw'
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 1e-4
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = 'cosine'  # 'constant' | 'step' | 'cosine'
  c.schedule.base_lr = 0.1
  c.schedule.scale_by_batch = False  # lr = base_lr * batch_size / 256 (Goyal et al. 2017).
  c.schedule.warmup_epochs = 0.0
  c.schedule.boundaries = (30.0, 60.0, 80.0)  # Epochs, for 'step'.
  c.schedule.decay_factor = 0.1

  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.log_every_steps = 50
  c.eval_every_epochs = 1.0
  c.init_from = ''  # A converted (resnet_jax.convert) or trained checkpoint to start from.
  c.restore_fallback = False  # Latest checkpoint unreadable: resume from the newest good one.
  c.skip_nonfinite = False  # Drop (and count) updates whose loss or gradient is NaN/Inf.
  c.lock()
  return c


def check_config(config) -> None:
  """Rejects values no run could use, naming the field and what would be valid."""
  if config.dtype not in DTYPES:
    raise ValueError(f"config.dtype '{config.dtype}' is not one of {DTYPES}")
  if config.parallelism not in PARALLELISM:
    raise ValueError(f"config.parallelism '{config.parallelism}' is not one of {PARALLELISM}")
  for field in ('batch_size', 'checkpoint_every_steps', 'log_every_steps', 'keep_checkpoints'):
    if config[field] < 1:
      raise ValueError(f'config.{field} must be >= 1, got {config[field]}')
  if config.num_epochs <= 0:
    raise ValueError(f'config.num_epochs must be > 0, got {config.num_epochs}')
  if len(config.dataset.mean) != len(config.dataset.std):
    raise ValueError('config.dataset.mean and config.dataset.std need the same number of values, '
                     f'got {config.dataset.mean} and {config.dataset.std}')
