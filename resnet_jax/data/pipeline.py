"""Grain loading: index-based shuffled training batches and padded, masked evaluation batches.

Each process reads its own shard of the records (multi-host), decodes and augments them (in
worker processes if asked), batches its share of the global batch, and hands the batch to JAX
to `parallel.DataParallel.shard_batch`, which places it on the devices.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator

import grain
import jax
import numpy as np

from resnet_jax.data.augment import AugmentOptions, EvalPreprocess, TrainAugment
from resnet_jax.data.sources import Split, to_iter_dataset
from resnet_jax.parallel import per_process_batch_size

if TYPE_CHECKING:
  from resnet_jax.data.preprocess import Preprocessing


def records_of_this_process(split: Split) -> grain.MapDataset:
  """This host's share of the records, for evaluation: every process_count-th record."""
  return grain.MapDataset.source(split.records)[jax.process_index()::jax.process_count()]


def train_augment(split: Split, augment: str, image_size: int, dataset_config=None,
                  preprocessing: Preprocessing | None = None) -> TrainAugment:
  """The per-example augmentation of `augment`, with the numbers of `dataset_config` (None: the
  defaults) and the colour PCA and cutout fill of `preprocessing` (when the ops need them)."""
  options = AugmentOptions.from_config(dataset_config)
  if preprocessing is None:
    return TrainAugment(augment, image_size, options)
  channels = split.records[0]['image'].shape[-1]
  fill = preprocessing.zero_image((image_size, image_size, channels))
  return TrainAugment(augment, image_size, options, preprocessing.lighting, fill)


def make_train_loader(split: Split, *, global_batch_size: int, seed: int, augment: str,
                      image_size: int, num_workers: int, dataset_config=None,
                      preprocessing: Preprocessing | None = None) -> grain.IterDataset:
  """An endless stream of training batches from `split`, reshuffled every epoch.

  Batch k is a pure function of (seed, k): the shuffle is an index permutation from `seed` and
  each example's augmentation is seeded from `seed` and its position, whatever the number of
  workers or hosts. `iter()` gives an iterator whose `get_state()` is saved in every checkpoint.
  `dataset_config` gives the ops' numbers (pad, scale_range, ...; None: the defaults);
  `preprocessing` (from `preprocess.fit`) the colour PCA of pca_lighting and cutout's fill.
  """
  batch_size = per_process_batch_size(global_batch_size)
  if len(split) < global_batch_size:
    raise ValueError(f'{split.name} has {len(split)} examples, fewer than config.batch_size='
                     f'{global_batch_size}')
  # One global order for every host count: the global batch k is positions [k*G, (k+1)*G) of
  # one shuffled stream, and process p takes the p-th of its process_count slices. So 2 hosts
  # x 4 devices see exactly the batches of 1 host x 8 devices.
  dataset = (grain.MapDataset.source(split.records)
             .seed(seed).shuffle().repeat(None)
             .random_map(train_augment(split, augment, image_size, dataset_config,
                                       preprocessing))
             .batch(batch_size, drop_remainder=True))
  dataset = dataset[jax.process_index()::jax.process_count()]
  return to_iter_dataset(dataset, num_workers)


def eval_batches(split: Split, *, global_batch_size: int, augment: str = 'none',
                 image_size: int = 0, num_workers: int = 0,
                 view: grain.transforms.Map | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Every example of `split` exactly once, in order, in batches padded with `mask == 0`.

  Every process yields the same number of batches (padding whole batches where its shard is
  shorter), so the collective evaluation step runs in lockstep on all hosts. Each example is
  the evaluation view of a model trained with `augment` at `image_size`, or what `view` (a
  Grain map of one record, e.g. evaluate.ViewsMap's several crops) makes of it.
  """
  batch_size = per_process_batch_size(global_batch_size)
  preprocess = EvalPreprocess(augment, image_size) if view is None else view
  dataset = (records_of_this_process(split)
             .map(preprocess).batch(batch_size, drop_remainder=False))
  num_batches = math.ceil(math.ceil(len(split) / jax.process_count()) / batch_size)
  image_shape = preprocess.map(split.records[0])['image'].shape
  batches = iter(to_iter_dataset(dataset, num_workers))
  for _ in range(num_batches):
    batch = next(batches, None)
    count = 0 if batch is None else len(batch['label'])
    image = np.zeros((batch_size, *image_shape), np.uint8)
    label = np.zeros((batch_size,), np.int32)
    if count:
      image[:count], label[:count] = batch['image'], batch['label']
    mask = (np.arange(batch_size) < count).astype(np.float32)
    yield {'image': image, 'label': label, 'mask': mask}
