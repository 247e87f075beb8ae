"""Orbax checkpoints of the train state and the Grain iterator: save, keep, resume.

A checkpoint holds two items: `state` (step, params, batch_stats, opt_state) and `data` (the
Grain iterator position, one file per process). Orbax writes to a temporary directory and
renames it when complete, so a crash mid-save never damages the latest good checkpoint; a
non-finite state is refused before anything is written.
"""
from __future__ import annotations

import os
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

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
  """Keeps the latest `keep` checkpoints plus the best one by validation accuracy."""

  def __init__(self, workdir: str, *, keep: int):
    if keep < 1:
      raise ValueError(f'config.keep_checkpoints must be >= 1, got {keep}')
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=lambda m: m['accuracy'], n=1,
                           keep_checkpoints_without_metrics=False),
        ]),
        create=True)
    self.manager = ocp.CheckpointManager(
        checkpoint_dir(workdir), options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator, metrics: dict | None = None) -> None:
    """Saves `state` (host-local or fully replicated arrays) and the iterator position."""
    tree = serialization.to_state_dict(state)
    if not bool(_all_finite(tree)):
      raise FloatingPointError(f'refusing to checkpoint step {step}: the train state holds NaN or '
                               'Inf (try a lower config.schedule.base_lr); the last good '
                               'checkpoint '
                               'is kept')
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), data=grain.checkpoint.CheckpointSave(data_iterator)),
        metrics=metrics)

  def restore(self, state: Any, data_iterator=None, step: int | None = None) -> Any:
    """The saved state shaped (and sharded) like `state`; also rewinds `data_iterator` if given."""
    step = self.manager.latest_step() if step is None else step
    target = serialization.to_state_dict(state)
    args = {'state': ocp.args.StandardRestore(target)}
    if data_iterator is not None:
      args['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return serialization.from_state_dict(state, restored['state'])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def load_state_tree(workdir: str, step: int | None = None) -> dict:
  """The raw saved state (NumPy arrays) of a workdir's latest (or given) checkpoint."""
  manager = ocp.CheckpointManager(
      checkpoint_dir(workdir), options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={'state': ocp.StandardCheckpointHandler()})
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {checkpoint_dir(workdir)}')
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return jax.tree.map(np.asarray, restored['state'])
