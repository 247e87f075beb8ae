"""Orbax checkpoints of the train state and the Grain iterator: save, keep, resume.

A checkpoint holds two items: `state` (step, params, batch_stats, opt_state) and `data` (the
Grain iterator position, one file per process). Orbax writes to a temporary directory and
renames it when complete, so a crash mid-save never damages the latest good checkpoint; a
non-finite state is refused before anything is written.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import serialization
from jax.experimental import multihost_utils

policies = ocp.checkpoint_managers


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints; a local workdir is made absolute (orbax wants that), a bucket is kept."""
  if '://' not in workdir:
    workdir = os.path.abspath(workdir)
  return os.path.join(workdir, 'checkpoints')


@jax.jit
def _all_finite(tree) -> jax.Array:
  """One device-side reduction: no host copy of the state just to check it."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class Checkpointer:
  """Keeps the latest `keep` checkpoints plus the best one by validation accuracy.

  `fallback=True`: when the latest checkpoint cannot be read, resume from the newest one that can.
  """

  def __init__(self, workdir: str, *, keep: int, fallback: bool = False):
    if keep < 1:
      raise ValueError(f'config.keep_checkpoints must be >= 1, got {keep}')
    self.fallback = fallback
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=lambda m: m['accuracy'], n=1,
                           keep_checkpoints_without_metrics=False),
        ]),
        # Without best_fn orbax keeps no checkpoint's metrics, and BestN then has none to rank.
        best_fn=lambda m: m['accuracy'], best_mode='max',
        cleanup_tmp_directories=True,  # Leftovers of a save cut short by a kill.
        create=True)
    self.manager = ocp.CheckpointManager(
        checkpoint_dir(workdir), options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def path(self, step: int) -> str:
    return os.path.join(str(self.manager.directory), str(step))

  def save(self, step: int, state: Any, data_iterator, metrics: dict | None = None) -> None:
    """Saves `state` (host-local or fully replicated arrays) and the iterator position (None:
    no iterator, for data whose order is a function of the step: data.on_device)."""
    tree = serialization.to_state_dict(state)
    if not bool(_all_finite(tree)):
      raise FloatingPointError(f'refusing to checkpoint step {step}: the train state holds NaN or '
                               'Inf (try a lower config.schedule.base_lr); the last good '
                               'checkpoint is kept')
    items = {'state': ocp.args.StandardSave(tree)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    with self._explain_disk_full(step):
      self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics)

  def restore(self, state: Any, data_iterator=None) -> tuple[Any, int]:
    """`_restore`, saying so when the checkpoint and `state` differ in their EMA weights."""
    try:
      return self._restore(state, data_iterator)
    except ValueError as e:
      if "['ema']" not in str(e):
        raise
      raise ValueError(f'{e} (these are the EMA weights: set --config.ema_decay as in the run '
                       'that wrote the checkpoint)') from e

  def _restore(self, state: Any, data_iterator=None) -> tuple[Any, int]:
    """(the newest readable saved state, shaped and sharded like `state`; its step).

    Also rewinds `data_iterator` when given. A checkpoint of another model is an error naming
    the first parameter that differs; an unreadable one is an error naming it, unless
    `fallback`, which then tries the older checkpoints, newest first.
    """
    target = serialization.to_state_dict(state)
    steps = sorted(self.manager.all_steps(), reverse=True)
    for i, step in enumerate(steps):
      try:
        items = self.manager.item_metadata(step)
        saved = items['state']
      except Exception as e:  # Orbax raises many kinds for a damaged directory.
        error = e
      else:
        _check_same_structure(target, saved, self.path(step))
        args = {'state': ocp.args.StandardRestore(target)}
        if data_iterator is not None and 'data' not in items.keys():
          raise ValueError(f'checkpoint {self.path(step)} holds no data iterator: it was written '
                           'with the split on device; resume with '
                           "config.dataset.on_device='always' (or 'auto', as it was written)")
        if data_iterator is not None:
          args['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
          restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:
          error = e
        else:
          self._set_aside(steps[:i])
          return serialization.from_state_dict(state, restored['state']), step
      older = steps[i + 1] if i + 1 < len(steps) else None
      if not self.fallback:
        hint = (f'set --config.restore_fallback=true to resume from step {older}' if older
                else 'no older checkpoint to fall back to; remove it to start afresh')
        raise ValueError(f'checkpoint {self.path(step)} cannot be read '
                         f'({type(error).__name__}: {error}); {hint}') from error
      logging.warning('checkpoint %s cannot be read (%s: %s); falling back to the one before',
                      self.path(step), type(error).__name__, error)
    raise FileNotFoundError(f'no readable checkpoint in {self.manager.directory}')

  def _set_aside(self, unreadable: list[int]) -> None:
    """Renames checkpoints we fell back from to STEP.unreadable (kept for a look, never loaded),
    so that training can write those steps again."""
    if not unreadable:
      return
    if jax.process_index() == 0:
      for step in unreadable:
        os.rename(self.path(step), self.path(step) + '.unreadable')
    multihost_utils.sync_global_devices('resnet_jax: set aside unreadable checkpoints')
    self.manager.reload()

  def wait(self) -> None:
    with self._explain_disk_full(None):
      self.manager.wait_until_finished()

  def close(self) -> None:
    # Orbax cleans up temporary directories on a thread started with the manager, which its
    # close() does not wait for: after an early error the interpreter would shut down under it,
    # and its RuntimeError would be the last line the user sees instead of the error.
    cleanup = getattr(self.manager, '_cleanup_tmp_directory_future', None)
    if cleanup is not None:
      cleanup.result()
    self.manager.close()

  @contextlib.contextmanager
  def _explain_disk_full(self, step: int | None):
    """Turns a full disk, however deep orbax or tensorstore reports it, into one clear error."""
    try:
      yield
    except Exception as e:
      if not _is_disk_full(e):
        raise
      where = f'step {step}' if step is not None else 'a checkpoint'
      raise OSError(errno.ENOSPC, f'disk full while saving {where} in {self.manager.directory}; '
                    f'the previous checkpoint (step {self.manager.latest_step()}) is intact. '
                    'Free space or point --workdir elsewhere, then restart to resume.') from e


def _is_disk_full(error: BaseException | None) -> bool:
  while error is not None:
    if getattr(error, 'errno', None) == errno.ENOSPC or 'No space left' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _check_same_structure(target: dict, saved, path: str) -> None:
  """Names the first parameter whose name or shape differs between the model and checkpoint."""
  want = {jax.tree_util.keystr(k): np.shape(v)
          for k, v in jax.tree_util.tree_flatten_with_path(target)[0]}
  have = {jax.tree_util.keystr(k): tuple(getattr(v, 'shape', ()) or ())
          for k, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
  for name, shape in want.items():
    if name not in have:
      raise ValueError(f'checkpoint {path} was written for another model or optimizer: it has no '
                       f'{name} (shape {shape} here)')
    if tuple(have[name]) != tuple(shape):
      raise ValueError(f'checkpoint {path} was written for another model: {name} has shape '
                       f'{tuple(have[name])} there and {tuple(shape)} here')
  extra = sorted(set(have) - set(want))
  if extra:
    raise ValueError(f'checkpoint {path} was written for another model: it has {extra[0]}, '
                     'which this model does not')


def load_state_tree(workdir: str, step: int | None = None) -> dict:
  """The raw saved state of a workdir's latest (or given) checkpoint, as host NumPy arrays.

  Works whatever topology saved it (any number of hosts and devices).
  """
  manager = ocp.CheckpointManager(
      checkpoint_dir(workdir), options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={'state': ocp.PyTreeCheckpointHandler()})
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {checkpoint_dir(workdir)}')
  metadata = manager.item_metadata(step)['state']
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(restore_args=as_numpy)))
  manager.close()
  return restored['state']


class Preemption:
  """Notices SIGTERM (a preemption notice, `kill`, a scheduler's stop) between steps.

  One process: our own handler sets a flag. Several: JAX's preemption service (started by
  jax.distributed.initialize) agrees on one step at which every process stops.
  """

  def __init__(self):
    self.requested = False
    self.multihost = jax.process_count() > 1
    if not self.multihost and threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def reached(self, step: int) -> bool:
    if self.multihost:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self) -> None:
    if not self.multihost and hasattr(self, 'previous'):
      signal.signal(signal.SIGTERM, self.previous)
