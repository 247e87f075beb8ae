"""`--mode restart`: how soon a run reaches its first training step, fresh and after a preemption.

Each row runs the main job (`python -m resnet_jax.main`) three times in one workdir, on a small
folder of generated images at the model's input size, and times from starting the process to the
log line of its first step (the first call compiled, or loaded, and ran):
  fresh        a new run, with an empty compilation cache;
  resume       SIGTERM'd after its first step (it saves a checkpoint, as on a preemption), then
               restarted with the cache off: what every restart paid before the cache;
  resume warm  restarted again with the cache the fresh run filled.
Each process is stopped by SIGTERM once its first step is logged, as a preempted job is.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

FIRST_STEP = 'the first call ran to step'
_SECONDS = re.compile(r'(compiled|loaded) the (?:compiled )?train step (?:from the cache )?in '
                      r'([0-9.]+) s')


def image_folder(folder: str, image_size: int, channels: int, per_class: int = 8,
                 classes: int = 2, seed: int = 0) -> str:
  """A folder source (train/<class>/NNN.png) of random images of one size; returns its root."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  for c in range(classes):
    os.makedirs(os.path.join(folder, 'train', f'class{c}'), exist_ok=True)
    for i in range(per_class):
      pixels = rng.integers(0, 256, (image_size, image_size, channels), dtype=np.uint8)
      Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(
          os.path.join(folder, 'train', f'class{c}', f'{i:03d}.png'))
  return folder


def time_to_first_step(command: list[str], timeout: float, env: dict | None = None) -> dict:
  """Starts `command` (with `env` on top of this process's environment), waits for its
  first-step line, SIGTERMs it and waits for it to save and exit: {'seconds': to the line,
  'compiled' or 'loaded': the step's compile or load seconds, 'log': its log}."""
  start = time.perf_counter()
  process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             text=True, env={**os.environ, 'PYTHONUNBUFFERED': '1', **(env or {})})
  lines, row = [], None
  try:
    for line in process.stderr:
      lines.append(line)
      if FIRST_STEP in line:
        row = {'seconds': time.perf_counter() - start}
        match = _SECONDS.search(line)
        if match:
          row[match.group(1)] = float(match.group(2))
        process.send_signal(signal.SIGTERM)  # As a preemption: it saves, then exits.
        break
      if time.perf_counter() - start > timeout:
        break
    lines += process.stderr.readlines()  # Until it exits, after saving.
    process.stderr.close()
    process.wait(timeout=timeout)
  finally:
    if process.poll() is None:
      process.kill()
  if row is None or process.returncode != 0:
    raise RuntimeError(f'{" ".join(command)} did not reach its first step (exit '
                       f'{process.returncode}):\n{"".join(lines[-30:])}')
  return {**row, 'log': ''.join(lines)}


def restart_row(name: str, *, dtype: str, batch: int, image_size: int | None,
                timeout: float = 600.0) -> dict:
  """The fresh, resume and warm-resume times of `name` (see the module's doc)."""
  from resnet_jax.models import model_spec
  spec = model_spec(name)
  size = image_size or spec['input_size']
  with tempfile.TemporaryDirectory() as tmp:
    data = image_folder(os.path.join(tmp, 'data'), size, spec['in_channels'],
                        per_class=max(4, batch))
    cache, workdir = os.path.join(tmp, 'cache'), os.path.join(tmp, 'run')

    def run(cache_dir: str) -> dict:
      return time_to_first_step([
          sys.executable, '-m', 'resnet_jax.main', f'--workdir={workdir}',
          f'--config.model.name={name}', f'--config.dtype={dtype}',
          f'--config.batch_size={batch}', f'--config.dataset.source=folder:{data}',
          f'--config.dataset.image_size={size}', '--config.dataset.eval_split=validation',
          '--config.dataset.val_fraction=0.25', '--config.num_epochs=1000',
          f'--config.compilation_cache_dir={cache_dir}'], timeout)

    fresh, resume, warm = run(cache), run(''), run(cache)
  return {'mode': 'restart', 'model': name, 'dtype': dtype, 'batch': batch, 'image_size': size,
          'fresh_s': fresh['seconds'], 'fresh_compile_s': fresh.get('compiled', float('nan')),
          'resume_s': resume['seconds'], 'warm_s': warm['seconds'],
          'warm_load_s': warm.get('loaded', float('nan')),
          'speedup': resume['seconds'] / warm['seconds'], 'cache_hit': 'loaded' in warm}
