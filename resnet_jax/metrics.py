"""What a run reports: TensorBoard events and metrics.jsonl (`MetricWriter`), the progress line
with its ETA, and the results files; all written by process 0 only.
"""
from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
from etils import epath


def describe_ema(results: dict) -> str:
  """' EMA accuracy A loss L' for a log line, when the results have them."""
  if 'ema_accuracy' not in results:
    return ''
  return f' EMA accuracy {results["ema_accuracy"]:.4f} loss {results["ema_loss"]:.4f}'


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch whenever
  it is installed, only to accept torch tensors, which cost the main job 350-400 MiB of resident
  memory and a second (docs/benchmarks.md). Our scalars are Python floats."""
  if 'tensorboardX' in sys.modules or 'torch' in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules['torch'] = None  # `import torch` raises ImportError: tensorboardX's fallback
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules['torch']
  return SummaryWriter


class MetricWriter:
  """TensorBoard event files (tensorboardX: no TensorFlow needed), written by process 0 only,
  and, for a local workdir, the same scalars as `metrics.jsonl` lines ({"step": ..., name: value})
  that scripts read without TensorBoard. A resumed run appends: the last line of a step wins."""

  def __init__(self, workdir: str):
    self.writer = self.lines = None
    if jax.process_index() == 0:
      SummaryWriter = _summary_writer_class()
      self.writer = SummaryWriter(logdir=workdir)
      if '://' not in workdir:  # Buckets cannot be appended to; TensorBoard has it all there.
        self.lines = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if self.writer:
      for name, value in scalars.items():
        self.writer.add_scalar(name, value, step)
      self.writer.flush()
    if self.lines:
      self.lines.write(json.dumps({'step': step, **scalars}) + '\n')
      self.lines.flush()

  def close(self) -> None:
    if self.writer:
      self.writer.close()
    if self.lines:
      self.lines.close()


def read_metrics(workdir: str) -> dict[int, dict[str, float]]:
  """`metrics.jsonl` as {step: scalars}, a step written twice (resumed runs) keeping the last."""
  steps: dict[int, dict[str, float]] = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      steps.setdefault(record.pop('step'), {}).update(record)
  return dict(sorted(steps.items()))


def write_results(workdir: str, results: dict) -> None:
  if jax.process_index() == 0:
    (epath.Path(workdir) / 'results.json').write_text(json.dumps(results, indent=2))


def format_eta(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def describe_values(values) -> str:
  """A scalar as '0.1234'; one value per member (vmapped trials, seed ensembles) as '0.1 0.2'."""
  values = np.asarray(values)
  if values.ndim == 0:
    return f'{float(values):.4f}'
  return ' '.join(f'{float(v):.4f}' for v in values.reshape(-1))


def scalars(values: dict, names: list[str] | None = None) -> dict[str, float]:
  """{tag: float} for MetricWriter: each value as it is, or with `names` (one per member) one
  tag per member, 'TAG/NAME'."""
  if names is None:
    return {tag: float(np.asarray(v)) for tag, v in values.items()}
  return {f'{tag}/{name}': float(np.asarray(v).reshape(-1)[i])
          for tag, v in values.items() for i, name in enumerate(names)}
