"""What a workdir says about its run, and who may write to it.

- `config.json`: the resolved config, written when training starts. A restart with a different
  config is refused (`check_config_change`) unless each changed field is named in
  `--allow_config_change`; evaluation reads it back (`load_config`).
- `run.json`: the class names and one entry per start of the run (package version, git commit,
  JAX version, devices, hosts, time, command line, the config changes allowed).
- `lock`: held by the live job that trains in the workdir (`WorkdirLock`).
"""
from __future__ import annotations

import datetime
import difflib
import errno
import fcntl
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from resnet_jax import config as config_lib

CONFIG_FILE, RUN_FILE, LOCK_FILE = 'config.json', 'run.json', 'lock'
RESULTS_FILE = 'results.json'  # The training run's final evaluation.
# What an evaluation of a stored run may set on top of its config: where and how much it reads,
# never what was trained.
EVAL_FIELDS = ('dataset.eval_split', 'batch_size', 'dataset.data_dir', 'dataset.num_workers',
               'parallelism', 'compilation_cache_dir')
# What a restart may change without --allow_config_change (logged, recorded): how to recover,
# where compiled programs are cached and what is watched, not what is trained. The
# damaged-checkpoint error itself asks for restore_fallback=true.
RECOVERY_FIELDS = ('restore_fallback', 'compilation_cache_dir', 'babysit.init_loss',
                   'babysit.update_ratio', 'babysit.overfit_steps', 'babysit.overfit_loss',
                   'babysit.lr_find_steps', 'babysit.lr_find_range', 'babysit.histogram_every',
                   'babysit.filters')
# Names other codebases give our fields (torch, timm, Keras), for the unknown-field hint.
ALIASES = {'learning_rate': 'schedule.base_lr', 'lr': 'schedule.base_lr',
           'epochs': 'num_epochs', 'wd': 'optimizer.weight_decay', 'model': 'model.name',
           'arch': 'model.name', 'data_dir': 'dataset.data_dir', 'workers': 'dataset.num_workers'}


# ---------------------------------------------------------------------------------------------
# Fields by their dotted names.


def flatten(config) -> dict[str, Any]:
  """{'optimizer.momentum': 0.9, ...}: every field, values as JSON gives them back (lists)."""
  def walk(tree: dict, prefix: str):
    for key, value in tree.items():
      if isinstance(value, dict):
        yield from walk(value, f'{prefix}{key}.')
      else:
        yield f'{prefix}{key}', value
  tree = config if isinstance(config, dict) else json.loads(config.to_json())
  return dict(walk(tree, ''))


def unknown_field_error(name: str, fields, what: str = 'config') -> str:
  """'config.a.b is not a field; did you mean ...? The fields of config.a: ...'."""
  fields = sorted(fields)
  section, _, leaf = name.rpartition('.')
  close = [ALIASES[leaf]] if leaf in ALIASES else []
  close += [c for c in difflib.get_close_matches(name, fields, n=3, cutoff=0.6) if c not in close]
  if not close:  # The section's fields whose own name is close ('learning_rate' -> 'base_lr').
    close = [f for f in fields
             if difflib.get_close_matches(leaf, [f.rpartition('.')[2]], cutoff=0.5)][:3]
  hint = f"; did you mean {' or '.join(what + '.' + c for c in close[:3])}?" if close else ''
  siblings = [f.rpartition('.')[2] for f in fields if f.rpartition('.')[0] == section]
  where = f'{what}.{section}' if section else what
  listing = (f' The fields of {where}: {", ".join(siblings)}.' if siblings else
             ' `--mode=show_config` lists every field; docs/config.md explains them.')
  return f'{what}.{name} is not a field{hint}{listing}'


def parent_of(config, name: str) -> tuple[Any, str]:
  """(the section holding dotted field `name`, its leaf name): config['a']['b'], 'c' for 'a.b.c'.
  A missing section raises KeyError or AttributeError, as ConfigDict does."""
  *parents, leaf = name.split('.')
  for part in parents:
    config = config[part]
  return config, leaf


def check_fields(names, config, what: str = 'config') -> None:
  """Raises ValueError for the first dotted name in `names` that is not a field of `config`."""
  fields = flatten(config)
  for name in names:
    if name not in fields:
      raise ValueError(unknown_field_error(name, fields, what))


# ---------------------------------------------------------------------------------------------
# config.json


def _path(workdir: str, name: str) -> epath.Path:
  return epath.Path(workdir) / name


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with, as a locked ConfigDict of today's fields."""
  path = _path(workdir, CONFIG_FILE)
  if not path.exists():
    raise FileNotFoundError(f'{path} does not exist: {workdir} holds no trained run (or was '
                            'written before runs recorded their config); pass --config')
  stored = flatten(json.loads(path.read_text()))
  config = config_lib.base_config()
  try:
    check_fields(stored, config)
  except ValueError as e:
    raise ValueError(f'{path} is not a config of this version of resnet_jax: {e}') from None
  with config.unlocked():
    for name, value in stored.items():
      section, leaf = parent_of(config, name)
      if isinstance(section[leaf], tuple) and isinstance(value, list):
        value = tuple(value)  # JSON has no tuples.
      section[leaf] = value
  return config


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """{field: (old, new)} for every field whose value differs (flattened configs)."""
  return {name: (old.get(name), new.get(name)) for name in sorted(set(old) | set(new))
          if old.get(name) != new.get(name)}


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
  return '\n'.join(f'  {name}: {old!r} (stored) -> {new!r} (now)'
                   for name, (old, new) in changes.items())


def check_config_change(workdir: str, config, allow=()) -> dict[str, tuple[Any, Any]]:
  """The changes of `config` against the workdir's stored config that `allow` names (logged);
  any other change is a ValueError listing each field with both values."""
  new = flatten(config)
  try:
    check_fields(allow, config)
  except ValueError as e:
    raise ValueError(f'--allow_config_change: {e}') from None
  path = _path(workdir, CONFIG_FILE)
  if not path.exists():
    return {}
  changes = config_changes(flatten(json.loads(path.read_text())), new)
  refused = {k: v for k, v in changes.items() if k not in allow and k not in RECOVERY_FIELDS}
  if refused:
    raise ValueError(
        f'{workdir} was trained with another config ({path}); these fields differ:\n'
        f'{describe_changes(refused)}\nTo resume with the new values pass '
        f'--allow_config_change={",".join(refused)}; to start afresh use another --workdir.')
  for name, (old, value) in changes.items():
    logging.warning('config.%s changed from %r to %r (%s)', name, old, value,
                    'a recovery field' if name in RECOVERY_FIELDS else
                    'allowed by --allow_config_change')
  return changes


def eval_config(stored, given, overrides, *, config_given: bool):
  """The config an evaluation of a stored run uses: `stored` with the fields `overrides` names
  (EVAL_FIELDS only) taken from `given`; or, when a config was given, `given` itself, which may
  differ from `stored` only in EVAL_FIELDS. Anything else is an error naming the fields."""
  if config_given:
    changes = {k: v for k, v in config_changes(flatten(stored), flatten(given)).items()
               if k not in EVAL_FIELDS}
    if changes:
      raise ValueError('the config given differs from the one the run was trained with:\n'
                       f'{describe_changes(changes)}\nLeave out --config to use the stored one '
                       f'(only {", ".join(EVAL_FIELDS)} may be set for an evaluation).')
    return given
  others = [name for name in overrides if name not in EVAL_FIELDS]
  if others:
    raise ValueError(f'--config.{others[0]}: an evaluation reads the config the run was trained '
                     f'with; only {", ".join(EVAL_FIELDS)} may be set on top of it')
  for name in overrides:
    (into, leaf), (source, _) = parent_of(stored, name), parent_of(given, name)
    into[leaf] = source[leaf]
  return stored


def eval_results_file(split: str, mode: str = 'center') -> str:
  """Where an evaluation of a run writes its scores: eval_SPLIT.json, eval_SPLIT_MODE.json for
  another mode than the center crop (results.json stays the training run's own result)."""
  return f'eval_{split}.json' if mode == 'center' else f'eval_{split}_{mode}.json'


def check_same_model(workdirs) -> None:
  """Members of one ensemble evaluation share their stored model section and input size."""
  first = flatten(load_config(workdirs[0]))
  for other in workdirs[1:]:
    changes = {k: v for k, v in config_changes(first, flatten(load_config(other))).items()
               if k.startswith('model.') or k == 'dataset.image_size'}
    if changes:
      raise ValueError(f'--workdirs: {other} trained another model than {workdirs[0]}:\n'
                       f'{describe_changes(changes)}')


def has_config(workdir: str) -> bool:
  return _path(workdir, CONFIG_FILE).exists()


def write_json(workdir: str, name: str, data) -> None:
  """WORKDIR/NAME, written whole by process 0 (a kill leaves the previous version)."""
  if jax.process_index() == 0:
    text = data if isinstance(data, str) else json.dumps(data, indent=2)
    tmp = _path(workdir, name + '.tmp')
    tmp.write_text(text)
    tmp.replace(_path(workdir, name))


# ---------------------------------------------------------------------------------------------
# run.json


def _git_commit() -> str | None:
  """HEAD of the checkout the package runs from ('+dirty' with uncommitted changes), if any."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True,
                          text=True, timeout=10)
    if head.returncode:
      return None
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=here,
                           capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return head.stdout.strip() + ('+dirty' if dirty else '')


def environment() -> dict[str, Any]:
  try:
    version = importlib.metadata.version('resnet_jax')
  except importlib.metadata.PackageNotFoundError:
    version = None
  devices = jax.devices()
  return {
      'time': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'command': [sys.executable, *sys.argv], 'cwd': os.getcwd(),
      'resnet_jax': version, 'git_commit': _git_commit(), 'python': platform.python_version(),
      'jax': jax.__version__, 'jaxlib': importlib.metadata.version('jaxlib'),
      'numpy': np.__version__, 'platform': devices[0].platform,
      'device_kind': devices[0].device_kind, 'devices': len(devices),
      'local_devices': jax.local_device_count(), 'processes': jax.process_count(),
      'host': socket.gethostname()}


def read_run(workdir: str) -> dict:
  """run.json as a dict ({'class_names': None, 'starts': []} when there is none)."""
  path = _path(workdir, RUN_FILE)
  return json.loads(path.read_text()) if path.exists() else {'class_names': None, 'starts': []}


def record_start(workdir: str, config, *, step: int, changes: dict,
                 class_names=None) -> None:
  """Writes config.json and appends this start (at `step`) to run.json."""
  if jax.process_index() != 0:
    return
  run = read_run(workdir)
  run['class_names'] = list(class_names) if class_names is not None else run.get('class_names')
  run['starts'].append({**environment(), 'step': step,
                        'config_changes': {k: list(v) for k, v in changes.items()}})
  write_json(workdir, CONFIG_FILE, config.to_json(indent=2))
  write_json(workdir, RUN_FILE, run)


# ---------------------------------------------------------------------------------------------
# The lock.


class WorkdirLock:
  """One training job per workdir: process 0 holds an exclusive `flock` on WORKDIR/lock, which
  names it (host, pid, start time). The kernel drops the lock when the holder dies however it
  dies, so a lock left by a dead job is taken over (with a warning). Every process agrees, or
  every process raises. A bucket workdir (gs://...) cannot be locked: it says so and goes on.
  """

  def __init__(self, workdir: str):
    self.workdir, self.fd = workdir, None
    self.path = os.path.join(workdir, LOCK_FILE)

  def __enter__(self) -> WorkdirLock:
    error = None
    if jax.process_index() == 0:
      try:
        self._acquire()
      except RuntimeError as e:
        error = e
    if jax.process_count() > 1:  # Process 0 decides for all.
      refused = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
      if refused and error is None:
        error = RuntimeError(f'process 0 could not lock {self.workdir}; see its log')
    if error is not None:
      raise error
    return self

  def _acquire(self) -> None:
    if '://' in self.workdir:
      logging.warning('%s is not on a local file system: no lock keeps a second job out',
                      self.workdir)
      return
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _read_holder(fd)
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      raise RuntimeError(
          f'{self.workdir} is in use by {holder} ({self.path}); wait for that job to end or stop '
          'it, or train in another --workdir') from None
    previous = _read_holder(fd)
    if previous:
      logging.warning('taking over %s from %s, which ended without releasing it', self.path,
                      previous)
    me = {'host': socket.gethostname(), 'pid': os.getpid(),
          'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds')}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    os.fsync(fd)
    self.fd = fd

  def __exit__(self, *exc) -> None:
    if self.fd is not None:  # Emptied, not removed: a job waiting on the same inode stays right.
      os.ftruncate(self.fd, 0)
      fcntl.flock(self.fd, fcntl.LOCK_UN)
      os.close(self.fd)
      self.fd = None


def _read_holder(fd: int) -> str:
  """'pid P on host H since T' from the lock file's contents ('' when empty or unreadable)."""
  text = os.pread(fd, 4096, 0).decode(errors='replace').strip()
  if not text:
    return ''
  try:
    h = json.loads(text)
    return f'pid {h["pid"]} on host {h["host"]} (started {h["started"]})'
  except (ValueError, KeyError, TypeError):
    return f'an unknown job ({text[:80]!r})'
