"""XLA compilations: the persistent cache a restart loads them from, and a record of each one.

A preempted job that restarts compiles the same programs again; with `config.compilation_cache_dir`
set (the default, under the user's cache folder) the entry points (main, sweep, evaluate) turn on
JAX's persistent compilation cache before the first compile, and a restart loads the compiled
train and eval steps from disk. JAX keys an entry by the program, the compile options (which hold
the device assignment: 1 device and 8 devices are different entries), the backend's version and
the accelerator's topology, and writes it from process 0 only: on a pod every host should read
one shared folder (launch.sh tpu-vm gives them gs://BUCKET/xla_cache), or only host 0 would find
its entries. An XLA:CPU entry is machine code for the CPU that compiled it: give machines of
different CPU models different folders.

`Compilations` listens to JAX's monitoring events and counts what was compiled, by function, and
what was loaded from the cache: the loop logs it for the first step, and the tests use it to check
that nothing compiles twice.
"""
from __future__ import annotations

import collections
import os
import threading

import jax
from absl import logging
from jax import monitoring

DEFAULT_DIR = '~/.cache/resnet_jax/xla'
# A program that compiled faster than this is not worth a file (JAX's default is 1 s; a CPU train
# step of a small net compiles in less, and is what a restart waits for).
MIN_COMPILE_SECONDS = 0.2
_BACKEND_COMPILE = '/jax/core/compile/backend_compile_duration'
_CACHE_HIT = '/jax/compilation_cache/cache_hits'
_CACHE_MISS = '/jax/compilation_cache/cache_misses'


def enable_cache(cache_dir: str) -> str:
  """Turns on JAX's persistent compilation cache in `cache_dir` ('' turns it off); returns the
  folder used ('' when off). With the default folder, JAX's own JAX_COMPILATION_CACHE_DIR, when
  set, is kept. Call before the first compile of the process: JAX decides whether a process
  uses the cache at its first compile."""
  if not cache_dir:
    jax.config.update('jax_enable_compilation_cache', False)
    return ''
  if cache_dir == DEFAULT_DIR and os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    cache_dir = os.environ['JAX_COMPILATION_CACHE_DIR']
  path = cache_dir
  if '://' not in cache_dir:  # A bucket (gs://...) is created by JAX's own file layer.
    path = os.path.abspath(os.path.expanduser(cache_dir))
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      raise ValueError(f'config.compilation_cache_dir={cache_dir!r}: cannot create {path} ({e}); '
                       "give a writable folder, or '' to turn the cache off") from e
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', path)
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECONDS)
  logging.info('XLA compilation cache: %s', path)
  return path


class Compilations:
  """What JAX compiles (and loads from the persistent cache) while this object is open.

  `compiled[name]` counts the backend compilations of each jitted function (a cache hit is one
  too: JAX times the load as the compile), `hits` and `misses` count the persistent cache's
  answers, `seconds` sums the backend compile (or load) time. Use as a context manager."""

  _open: list[Compilations] = []
  _lock = threading.Lock()
  _registered = False

  def __init__(self):
    self.compiled: collections.Counter[str] = collections.Counter()
    self.hits = self.misses = 0
    self.seconds = 0.0

  @classmethod
  def _register(cls) -> None:
    # JAX offers no way to remove an event listener: one of each, for the whole process.
    with cls._lock:
      if not cls._registered:
        monitoring.register_event_listener(cls._on_event)
        monitoring.register_event_duration_secs_listener(cls._on_duration)
        cls._registered = True

  @classmethod
  def _on_event(cls, event: str, **_) -> None:
    for c in list(cls._open):
      if event == _CACHE_HIT:
        c.hits += 1
      elif event == _CACHE_MISS:
        c.misses += 1

  @classmethod
  def _on_duration(cls, event: str, seconds: float, fun_name: str = '?', **_) -> None:
    if event == _BACKEND_COMPILE:
      for c in list(cls._open):
        c.compiled[fun_name] += 1
        c.seconds += seconds

  def __enter__(self) -> Compilations:
    self._register()
    with self._lock:
      self._open.append(self)
    return self

  def __exit__(self, *exc) -> None:
    with self._lock:
      self._open.remove(self)

  def describe(self, what: str) -> str:
    """One line for the log: whether `what` was compiled or loaded, and in how long."""
    if self.hits and not self.misses:
      return f'loaded the compiled {what} from the cache in {self.seconds:.1f} s'
    if self.hits:
      return (f'compiled the {what} in {self.seconds:.1f} s ({self.hits} of '
              f'{self.hits + self.misses} programs loaded from the cache)')
    return f'compiled the {what} in {self.seconds:.1f} s'
