"""Grain loading: index-based shuffled training batches and padded, masked evaluation batches.

Each process reads its own shard of the indices (multi-host), decodes and augments in worker
processes, batches its share of the global batch, and hands the batch to JAX as one global array
sharded over the mesh axis `batch` (or, for `jax.pmap`, as a [local devices, per device, ...]
array).
"""
from __future__ import annotations

import math
from typing import Iterator

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from resnet_jax.data.augment import EvalPreprocess, TrainAugment
from resnet_jax.data.sources import Split


def per_process_batch_size(global_batch_size: int) -> int:
  """This process's share of the global batch; the batch must split evenly over every device."""
  devices = jax.device_count()
  if global_batch_size % devices:
    raise ValueError(f'config.batch_size={global_batch_size} must be divisible by the number of '
                     f'devices ({devices}); try '
                     f'{max(devices, global_batch_size // devices * devices)}')
  return global_batch_size // jax.process_count()


def _read_options(num_workers: int) -> grain.ReadOptions:
  """In-process loading is fastest without Grain's reader threads (they contend for the GIL);
  worker processes keep the default threads, which overlap file reads."""
  return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0) if num_workers == 0 else None


def make_train_loader(split: Split, *, global_batch_size: int, seed: int, augment: str,
                      image_size: int, num_workers: int) -> grain.DataLoader:
  """An endless, reshuffled-every-epoch stream of training batches from `split`.

  The sampler orders example indices from `seed` alone, and Grain seeds each example's
  augmentation from `seed` and its position in that order, so iterator state (saved in every
  checkpoint) is all it takes to resume exactly.
  """
  batch_size = per_process_batch_size(global_batch_size)
  if len(split) < global_batch_size:
    raise ValueError(f'{split.name} has {len(split)} examples, fewer than config.batch_size='
                     f'{global_batch_size}')
  sampler = grain.samplers.IndexSampler(
      num_records=len(split),
      shard_options=grain.sharding.ShardByJaxProcess(drop_remainder=True),
      shuffle=True, num_epochs=None, seed=seed)
  return grain.DataLoader(
      data_source=split.records, sampler=sampler, worker_count=num_workers,
      read_options=_read_options(num_workers),
      operations=[TrainAugment(augment, image_size),
                  grain.transforms.Batch(batch_size, drop_remainder=True)])


def eval_batches(split: Split, *, global_batch_size: int, augment: str, image_size: int,
                 num_workers: int) -> Iterator[dict[str, np.ndarray]]:
  """Every example of `split` exactly once, in order, in batches padded with `mask == 0`.

  Every process yields the same number of batches (padding whole batches where its shard is
  shorter), so the collective evaluation step runs in lockstep on all hosts.
  """
  batch_size = per_process_batch_size(global_batch_size)
  preprocess = EvalPreprocess(augment, image_size)
  sampler = grain.samplers.IndexSampler(
      num_records=len(split),
      shard_options=grain.sharding.ShardByJaxProcess(drop_remainder=False),
      shuffle=False, num_epochs=1)
  loader = grain.DataLoader(
      data_source=split.records, sampler=sampler, worker_count=num_workers,
      read_options=_read_options(num_workers),
      operations=[preprocess, grain.transforms.Batch(batch_size, drop_remainder=False)])
  num_batches = math.ceil(math.ceil(len(split) / jax.process_count()) / batch_size)
  image_shape = preprocess.map(split.records[0])['image'].shape
  batches = iter(loader)
  for _ in range(num_batches):
    batch = next(batches, None)
    count = 0 if batch is None else len(batch['label'])
    image = np.zeros((batch_size, *image_shape), np.uint8)
    label = np.zeros((batch_size,), np.int32)
    if count:
      image[:count], label[:count] = batch['image'], batch['label']
    mask = (np.arange(batch_size) < count).astype(np.float32)
    yield {'image': image, 'label': label, 'mask': mask}


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis split over the mesh axis `batch`."""
  return NamedSharding(mesh, PartitionSpec('batch'))


def to_global(batch: dict[str, np.ndarray], mesh: Mesh | None, local_devices: int) -> dict:
  """Places this process's batch on its devices.

  With a mesh (shard_map): one global jax.Array per field, sharded over `batch`.
  Without (pmap): a NumPy array with a leading local-device axis, which `jax.pmap` splits.
  """
  if mesh is None:
    n = local_devices
    return {k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in batch.items()}
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
