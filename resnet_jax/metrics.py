"""What a run reports: TensorBoard events and metrics.jsonl (`MetricWriter`: scalars, the config as
text and HParams, the `parameter_overview` table), the progress line with its ETA, and the results
files; all written by process 0 only.
"""
from __future__ import annotations

import json
import logging as std_logging
import math
import os
import sys
import time

import jax
import numpy as np
from absl import flags, logging
from flax import traverse_util

# The scalars TensorBoard's HParams tab sets beside each run's config (train.py writes them).
HPARAM_METRICS = ('eval/accuracy', 'eval/loss', 'train/loss')


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

  def write_histograms(self, step: int, arrays: dict[str, np.ndarray]) -> None:
    """One TensorBoard histogram per entry (tag: its key), of all its values."""
    if self.writer:
      for tag, values in arrays.items():
        self.writer.add_histogram(tag, np.asarray(values, np.float32).reshape(-1), step)
      self.writer.flush()

  def write_image(self, tag: str, image: np.ndarray, step: int) -> None:
    """An [H, W, 3] image of values in [0, 1] (TensorBoard's Images tab)."""
    if self.writer:
      self.writer.add_image(tag, image, step, dataformats='HWC')
      self.writer.flush()

  def write_text(self, tag: str, text: str) -> None:
    """`text` shown verbatim: TensorBoard renders text as Markdown, which would reflow a table."""
    if self.writer:
      self.writer.add_text(tag, f'```\n{text}\n```', 0)
      self.writer.flush()

  def write_parameters(self, model_name: str, params, flops_per_image=None) -> None:
    """The `parameter_overview` table of `params`, logged and written as text 'parameters'."""
    overview = parameter_overview(params, flops_per_image)
    logging.info('Parameters of %s:\n%s', model_name, overview)
    self.write_text('parameters', overview)

  def write_config(self, config) -> None:
    """The config (a ConfigDict or a dict) as JSON text (tag 'config') and as HParams, its
    fields dotted ('optimizer.momentum'), so TensorBoard's HParams tab compares runs by them."""
    if not self.writer:
      return
    values = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
    self.write_text('config', json.dumps(values, indent=2, sort_keys=True, default=str))
    from tensorboardX.summary import hparams  # Imported after SummaryWriter: torch stays out.
    fields = {name: _hparam_value(v)
              for name, v in traverse_util.flatten_dict(values, sep='.').items()}
    experiment, session_start, _ = hparams(fields, dict.fromkeys(HPARAM_METRICS))
    # Into this run's own event file: add_hparams would open a sub-run apart from the scalars.
    # No session end: the run has not ended; TensorBoard shows it as unknown meanwhile.
    self.writer.file_writer.add_summary(experiment)
    self.writer.file_writer.add_summary(session_start)
    self.writer.flush()

  def close(self) -> None:
    if self.writer:
      self.writer.close()
    if self.lines:
      self.lines.close()


def _hparam_value(value):
  """An HParam is a bool, a number or a string: tuples, lists and None as their text."""
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, (bool, int, float, str)):
    return value
  return str(value)


def parameter_overview(params, flops_per_image: float | None = None) -> str:
  """A plain-text table of `params` (arrays or jax.ShapeDtypeStruct): one row per top-level
  module (its parameter count, its leaves' shapes), the total (with MB at float32), and, when
  given, the forward FLOPs per image. The `params` collection only: batch_stats are not trained."""
  rows = []
  for module, subtree in params.items():
    leaves = traverse_util.flatten_dict(subtree, sep='/') if hasattr(subtree, 'items') else {
        '': subtree}
    count = sum(int(np.prod(leaf.shape)) for leaf in leaves.values())
    rows.append((str(module), f'{count:,}', _shapes(leaves)))
  total = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))
  rows.append(('total', f'{total:,}', f'{total * 4 / 1e6:.2f} MB at float32'))
  names = max(len(r[0]) for r in rows)
  counts = max(len(r[1]) for r in rows)
  lines = [f'{"module":<{names}}  {"params":>{counts}}  shapes']
  lines += [f'{name:<{names}}  {count:>{counts}}  {shapes}' for name, count, shapes in rows]
  if flops_per_image is not None:
    gflops = flops_per_image / 1e9
    # Two significant digits for small nets (LeNet-5: 0.00085), where '0.00' would say nothing.
    shown = f'{gflops:.2f}' if gflops >= 0.01 else f'{gflops:.2g}'
    lines.append(f'forward FLOPs per image: {shown} GFLOPs (XLA cost analysis)')
  return '\n'.join(lines)


def _shapes(leaves: dict, width: int = 64) -> str:
  """'kernel (5, 5, 1, 6), bias (6,)', largest first (a cut row keeps the weights that count),
  cut to about `width` characters with ', ...'."""
  text = ''
  for path, leaf in sorted(leaves.items(), key=lambda item: -int(np.prod(item[1].shape))):
    part = f'{path} {tuple(leaf.shape)}'.strip()
    if text and len(text) + len(part) > width:
      return text + ', ...'
    text = f'{text}, {part}' if text else part
  return text


def read_metrics(workdir: str) -> dict[int, dict[str, float]]:
  """`metrics.jsonl` as {step: scalars}, a step written twice (resumed runs) keeping the last."""
  steps: dict[int, dict[str, float]] = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      steps.setdefault(record.pop('step'), {}).update(record)
  return dict(sorted(steps.items()))


def format_eta(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class QuietLibraries(std_logging.Filter):
  """Keeps orbax's per-save INFO chatter out of the progress log (its warnings still show, but
  for the one on every save between evaluations: only evaluations carry a metric to rank)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if '/orbax/' not in record.pathname:
      return True
    return (record.levelno >= std_logging.WARNING
            and 'did not provide metrics' not in record.getMessage())


def use_info_logging() -> None:
  """INFO logs (the progress lines) for a run started from Python, as the entry points' absl app
  gives them. Outside an absl app (flags not parsed) it marks the flags parsed with their
  defaults (Grain reads its options from them) and, unless the user set up logging handlers of
  their own, logs INFO through absl's handler on process 0."""
  if flags.FLAGS.is_parsed():  # In an absl app, or set up by its caller: theirs to decide.
    return
  flags.FLAGS.mark_as_parsed()
  root = std_logging.getLogger()
  # absl logs before flag parsing through logging.basicConfig()'s stderr handler: not a user's.
  defaults = [h for h in root.handlers if type(h) is std_logging.StreamHandler
              and h.stream is sys.stderr and h.formatter
              and h.formatter._fmt == std_logging.BASIC_FORMAT]
  if len(defaults) != len(root.handlers) or jax.process_index() != 0:
    return
  for handler in defaults:
    root.removeHandler(handler)
  logging.use_absl_handler()
  logging.get_absl_handler().addFilter(QuietLibraries())
  logging.set_verbosity(logging.INFO)


class Progress:
  """The progress line (epoch, step, loss, accuracy, lr, images/s, ETA). The first call of the
  step compiles it: it is timed and logged apart, and the speed and the ETA count from its end;
  the clock restarts after each evaluation."""

  def __init__(self, *, start: int, total_steps: int, batch_size: int, steps_per_epoch: int,
               num_epochs: float):
    self.total_steps, self.batch_size = total_steps, batch_size
    self.steps_per_epoch, self.num_epochs = steps_per_epoch, num_epochs
    self.per_step = None  # Seconds per step, once known.
    self.restart(start)
    if start < total_steps:
      logging.info('compiling the train step ...')

  def restart(self, step: int) -> None:
    self.clock, self.since = time.perf_counter(), step

  def compiled(self, state, step: int, compilations=None) -> None:
    """After the first call, which ran the steps up to `step`: waits for it, logs its time and,
    with `compilations` (compilation.Compilations of the call), whether the step was compiled or
    loaded from the persistent cache."""
    jax.block_until_ready(state)
    seconds = time.perf_counter() - self.clock
    what = compilations.describe('train step') + '; ' if compilations is not None else ''
    logging.info('%sthe first call ran to step %d in %.1f s', what, step, seconds)
    self.per_step = seconds / max(1, step - self.since)  # Until a step without compiling.
    self.restart(step)

  def log(self, step: int, mean: dict, lr: float, skipped: int) -> float:
    """Logs the line for `step` with the interval's `mean` metrics; returns images/s."""
    if step > self.since:
      self.per_step = (time.perf_counter() - self.clock) / (step - self.since)
    logging.info('epoch %.2f/%g step %d/%d loss %s accuracy %s lr %.4g %.0f img/s ETA %s%s',
                 step / self.steps_per_epoch, self.num_epochs, step, self.total_steps,
                 describe_values(mean['loss']), describe_values(mean['accuracy']), lr,
                 self.batch_size / self.per_step,
                 format_eta(self.per_step * (self.total_steps - step)),
                 f' skipped {skipped} non-finite steps' if skipped else '')
    self.restart(step)
    return self.batch_size / self.per_step


def check_finite(step_metrics: list[tuple[int, dict]], skip_nonfinite: bool) -> None:
  """Stops at the first step whose loss or gradient norm is NaN or Inf, naming both."""
  if skip_nonfinite:
    return
  for step, values in step_metrics:
    for name in ('loss', 'grad_norm'):
      if not np.all(np.isfinite(values[name])):
        raise FloatingPointError(
            f'{name} is {values[name]} at step {step}; stopped before it reached a checkpoint '
            '(the last good one is kept). Try a lower config.schedule.base_lr, or set '
            'config.skip_nonfinite=true to drop such updates and count them.')


def split_by_step(call_steps: range, values: dict, chunked: bool) -> list[tuple[int, dict]]:
  """(step, metrics) for each step of one call: a step's values, or a chunk's stacked ones."""
  if not chunked:
    return [(call_steps[0], values)]
  return [(s, jax.tree.map(lambda x, i=i: x[i], values)) for i, s in enumerate(call_steps)]


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


# ---------------------------------------------------------------------------------------------
# Babysitting checks on the fetched metrics (babysit.py has the modes).

# Relative distance from log(num_classes) beyond which the initial loss is called far off: a
# Kaiming-initialised head gives logits of std ~1 (loss log C + ~0.5); ten times that is a bug.
INIT_LOSS_TOLERANCE = 0.5
# The update-to-weight ratio's rule of thumb (CS231n, "Ratio of weights:updates"): ~1e-3.
RATIO_RANGE = (1e-4, 1e-2)


class Watch:
  """Checks on what the loop fetches (train.loop's `watch`), each logged and written to
  TensorBoard: the initial loss, the update-to-weight ratios and, with an `inspect` function,
  activation and gradient histograms, dead-ReLU fractions and the first layer's filters."""

  def __init__(self, babysit, num_classes: int, model=None, inspect=None):
    """`babysit`: config.babysit; `model`: the model trained (its auxiliary classifiers' loss
    weight, AUX_WEIGHT, is taken out of the first loss); `inspect(variables)`: a fixed batch's
    steps.layer_statistics (histograms and dead ReLUs every babysit.histogram_every steps)."""
    self.init_loss, self.num_classes = babysit.init_loss, num_classes
    self.aux_weight = getattr(model, 'AUX_WEIGHT', 0.0)
    self.histogram_every, self.filters = babysit.histogram_every, babysit.filters
    self.inspect, self.last_step = inspect, None

  def __call__(self, step_metrics: list[tuple[int, dict]], writer: MetricWriter,
               state=None, evaluated: bool = False) -> None:
    """`state() -> the train state` (one copy) for the looks inside the net; `evaluated`: this
    step is an evaluation's (the filters are written then)."""
    first_step, first = step_metrics[0]
    step = step_metrics[-1][0]
    if self.init_loss and first_step == 1:  # A fresh run: step 1 saw the initial weights.
      # The main classifier's loss: `loss` also holds the weighted auxiliary losses.
      loss = np.asarray(first['loss']) - self.aux_weight * np.asarray(first.get('aux_loss', 0.0))
      writer.write(1, {'babysit/initial_loss': float(np.mean(loss)),
                       'babysit/chance_loss': math.log(self.num_classes)})
      check_initial_loss(loss, self.num_classes)
    ratios = {k: v for k, v in step_metrics[-1][1].items() if k.startswith('update_ratio/')}
    if ratios:
      logging.info('%s', describe_update_ratios(ratios, step))
    every, last = self.histogram_every, (first_step - 1 if self.last_step is None
                                         else self.last_step)
    self.last_step = step
    inspect_now = self.inspect and every and step // every > last // every
    if state is None or not (inspect_now or (self.filters and evaluated)):
      return
    current = state()
    current = jax.device_get({'params': current.params, 'batch_stats': current.batch_stats})
    if inspect_now:
      stats = jax.device_get(self.inspect(current))
      writer.write_histograms(step, {**{f'activations/{k}': v for k, v in
                                        stats['activations'].items()},
                                     **{f'gradients/{k}': v for k, v in
                                        stats['gradients'].items()}})
      dead = {k: float(v) for k, v in stats['dead'].items()}
      writer.write(step, {f'babysit/dead_relu/{k}': v for k, v in dead.items()})
      logging.info('%s', describe_dead(dead, step))
    if self.filters and evaluated:
      kernel = first_kernel(current['params'])
      if kernel is not None:
        writer.write_image('babysit/first_layer_filters', filter_grid(kernel), step)


def describe_dead(dead: dict[str, float], step: int) -> str:
  """One line: the mean dead-ReLU fraction over the layers and the worst layers."""
  if not dead:
    return f'dead ReLUs at step {step}: no layer outputs to check'
  worst = sorted(dead, key=dead.get, reverse=True)[:3]
  mean = float(np.mean(list(dead.values())))
  return (f'dead ReLUs at step {step}: {mean:.1%} of channels on average over {len(dead)} '
          f'layers; most: ' + ', '.join(f'{k} {dead[k]:.0%}' for k in worst))


def first_kernel(params: dict) -> np.ndarray | None:
  """The first [kh, kw, in, out] convolution kernel of `params` in creation order (the stem's),
  or None for a net without convolutions."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if path[-1].key == 'kernel' and np.ndim(leaf) == 4:
      return np.asarray(leaf)
  return None


def filter_grid(kernel: np.ndarray, scale: int = 4, border: int = 1) -> np.ndarray:
  """A first-layer kernel [kh, kw, in, out] as one [H, W, 3] image in [0, 1]: a tile per filter,
  each stretched to its own min..max (grey for one input channel; only the first three
  input channels shown otherwise), `scale` pixels per weight, a black `border`."""
  kh, kw, _, cout = kernel.shape
  tiles = np.asarray(kernel, np.float32)[:, :, :3, :]
  low = tiles.min(axis=(0, 1, 2), keepdims=True)
  high = tiles.max(axis=(0, 1, 2), keepdims=True)
  tiles = (tiles - low) / np.maximum(high - low, 1e-12)
  if tiles.shape[2] < 3:
    tiles = np.repeat(tiles[:, :, :1], 3, axis=2)
  tiles = tiles.repeat(scale, 0).repeat(scale, 1)
  columns = math.ceil(math.sqrt(cout))
  rows = math.ceil(cout / columns)
  th, tw = kh * scale + border, kw * scale + border
  grid = np.zeros((rows * th + border, columns * tw + border, 3), np.float32)
  for i in range(cout):
    r, c = divmod(i, columns)
    grid[border + r * th:(r + 1) * th, border + c * tw:(c + 1) * tw] = tiles[..., i]
  return grid


def check_initial_loss(loss, num_classes: int) -> bool:
  """Logs the first step's loss beside log(num_classes), as a warning when it is further than
  INIT_LOSS_TOLERANCE (relative) from it; returns whether it is within."""
  chance = math.log(num_classes)
  worst = float(np.max(np.abs(np.asarray(loss) - chance)))
  ok = worst <= INIT_LOSS_TOLERANCE * chance
  message = (f'initial loss {describe_values(np.asarray(loss).tolist())}, chance level '
             f'log({num_classes}) = {chance:.3f}')
  if ok:
    logging.info('%s: as expected.', message)
  else:
    logging.warning('%s: far off. Check the init (config.model.init), the input scaling '
                    '(config.dataset.mean/std) and the labels before training on.', message)
  return ok


def describe_update_ratios(ratios: dict, step: int) -> str:
  """One line: the median, lowest and highest update-to-weight ratio over the kernels, and a
  note when the median is outside RATIO_RANGE."""
  values = {k.removeprefix('update_ratio/'): float(np.mean(v)) for k, v in ratios.items()}
  low, high = min(values, key=values.get), max(values, key=values.get)
  median = float(np.median(list(values.values())))
  line = (f'update/weight ratio at step {step}: median {median:.2g} over {len(values)} kernels '
          f'(lowest {values[low]:.2g} {low}, highest {values[high]:.2g} {high})')
  if median < RATIO_RANGE[0]:
    return line + '; below ~1e-3: the learning rate may be too low'
  if median > RATIO_RANGE[1]:
    return line + '; above ~1e-3: the learning rate may be too high'
  return line
