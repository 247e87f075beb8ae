"""Data parallelism: one per-device function, mapped by `jax.shard_map` (default) or `jax.pmap`.

Per-device functions are written pmap-style: each sees one device's slice of the batch and
averages over the mesh axis `AXIS` with `lax.pmean` (`cross_replica_mean`). `DataParallel` maps
such a function over a 1-D mesh of every device of every host, places its inputs, and sums what
an evaluation step returns over batches.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = 'batch'  # The one mesh axis: the examples of the global batch.
MODES = ('shard_map', 'pmap')
PROGRESS_SECONDS = 30.0  # A long evaluation (ImageNet's 50,000 images) says how far it got.


def cross_replica_mean(tree):
  """The mean of `tree` over every device (call inside a function mapped by DataParallel)."""
  return lax.pmean(tree, AXIS)


def per_process_batch_size(global_batch_size: int) -> int:
  """This process's share of the global batch; the batch must split evenly over every device."""
  devices = jax.device_count()
  if global_batch_size % devices:
    raise ValueError(f'config.batch_size={global_batch_size} must be divisible by the number of '
                     f'devices ({devices}); try '
                     f'{max(devices, global_batch_size // devices * devices)}')
  return global_batch_size // jax.process_count()


@dataclasses.dataclass
class DataParallel:
  """How per-device functions are mapped over devices, and where their inputs live.

  Arguments come in four kinds: 'state' (the same on every device: a replicated global array
  under shard_map, a stacked [device, ...] array under pmap), 'data' (laid out as 'state' but
  never donated: a dataset kept on the devices), 'batch' (split over devices along the leading
  axis) and 'const' (a small value every device sees whole, such as a PRNG key).
  `devices` defaults to every device of every host.
  """
  mode: str = 'shard_map'
  devices: Sequence[jax.Device] | None = None

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"config.parallelism '{self.mode}' is not one of {MODES}")
    self.devices = list(jax.devices() if self.devices is None else self.devices)
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    self.mesh = Mesh(np.asarray(self.devices), (AXIS,)) if self.mode == 'shard_map' else None

  @property
  def platform(self) -> str:
    return self.devices[0].platform

  def map(self, fn: Callable, kinds: tuple[str, ...], donate_state: bool = False) -> Callable:
    donate = tuple(i for i, k in enumerate(kinds) if k == 'state') if donate_state else ()
    if self.mode == 'pmap':
      in_axes = tuple(None if k == 'const' else 0 for k in kinds)
      return jax.pmap(fn, axis_name=AXIS, in_axes=in_axes, donate_argnums=donate,
                      devices=self.devices)
    specs = tuple(PartitionSpec(AXIS) if k == 'batch' else PartitionSpec() for k in kinds)
    # check_vma=False keeps pmap's semantics: the gradient of a replicated parameter is this
    # device's own (with vma checking, autodiff would psum it already and pmean would not average).
    mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=specs, out_specs=PartitionSpec(),
                           check_vma=False)
    return jax.jit(mapped, donate_argnums=donate)

  def replicate(self, tree):
    """One copy of a pytree -> the 'state' layout on every device."""
    if self.mode == 'pmap':
      n = len(self.local_devices)
      return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree)
    return jax.jit(lambda t: t, out_shardings=NamedSharding(self.mesh, PartitionSpec()))(tree)

  def replicated_init(self, init: Callable, *args):
    """`init(*args)` computed straight into the 'state' layout (no host copy under shard_map)."""
    if self.mode == 'pmap':
      return self.replicate(jax.device_get(jax.jit(init)(*args)))
    return jax.jit(init, out_shardings=NamedSharding(self.mesh, PartitionSpec()))(*args)

  def unreplicate(self, tree):
    """The 'state' layout -> one copy (device arrays; fetch with jax.device_get)."""
    if self.mode == 'pmap':
      # A stacked NumPy leaf's x[0] is a NumPy scalar (not an array): orbax cannot restore into it.
      return jax.tree.map(lambda x: x[0] if isinstance(x, jax.Array) else np.asarray(x[0]), tree)
    return tree

  def shard_batch(self, batch: dict[str, np.ndarray]) -> dict:
    """This process's slice of the global batch -> the 'batch' layout.

    shard_map: one global jax.Array per field, sharded over AXIS. pmap: a NumPy array with a
    leading local-device axis, which `jax.pmap` splits.
    """
    if self.mesh is None:
      n = len(self.local_devices)
      return {k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in batch.items()}
    sharding = NamedSharding(self.mesh, PartitionSpec(AXIS))
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}

  def place(self, arrays):
    """A pytree of host arrays -> one whole copy per device, in the 'data' layout."""
    arrays = jax.tree.map(np.asarray, arrays)
    if self.mode == 'pmap':
      n = len(self.local_devices)
      copy = jax.pmap(lambda x: x, devices=self.devices)
      return copy(jax.tree.map(lambda x: np.broadcast_to(x, (n, *x.shape)), arrays))
    replicated = NamedSharding(self.mesh, PartitionSpec())
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(x.shape, replicated, lambda index: x[index]),
        arrays)

  def sum_batches(self, step: Callable, batches: Iterable[dict], *args) -> dict:
    """Host copies of `step(*args[:1], batch, *args[1:])` summed over `batches`.

    `step` is a mapped evaluation step whose outputs are already summed over the devices (psum),
    called as step(args[0], shard_batch(batch), *args[1:]): the one place evaluation sums live.
    A long evaluation logs how far it got every PROGRESS_SECONDS.
    """
    first, *rest = args
    totals, seen, started = None, 0, time.perf_counter()
    last_report = started
    for batch in batches:
      sums = step(first, self.shard_batch(batch), *rest)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
      seen += len(batch['mask'])
      if time.perf_counter() - last_report > PROGRESS_SECONDS:
        last_report = time.perf_counter()
        logging.info('evaluating: %d examples (of this process) in %.0f s', seen,
                     last_report - started)
    if totals is None:
      raise ValueError('no evaluation batch: the eval split is empty')
    return jax.device_get(self.unreplicate(totals))
