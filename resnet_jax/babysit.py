"""Babysitting a run: the checks every training guide teaches, as config switches
(`config.babysit`) and main-job modes.

- Initial loss (`babysit.init_loss`, on by default): a fresh run's first loss is computed with
  the initial weights; with small random weights the predictions are near uniform, so it should
  be near log(num_classes) (2.30 for 10 classes). Far off means a broken init, scaled inputs or
  wrong labels (CS231n, "Babysitting the learning process": look for correct loss at chance).
- Update-to-weight ratio (`babysit.update_ratio`): every step reports ||w_new - w|| / ||w|| for
  each conv/dense kernel (`steps.update_to_weight_ratios`: the real update, momentum and decay
  included); the log summarises them at each fetch. About 1e-3 is the rule of thumb; much lower,
  the learning rate is too low; much higher, too high. Off, the step returns nothing extra.
- `--mode=overfit_batch` (`overfit_batch`): one batch of the training split, trained on again
  and again until the loss is near zero. A net that cannot memorise 16 images has a bug.
- `--mode=lr_find` (`lr_find`): the learning-rate range test (Smith 2017, "Cyclical Learning
  Rates", Sec. 3.3): the rate grows exponentially over a few hundred steps while the loss is
  recorded; writes WORKDIR/lr_find.csv and .png and suggests a base learning rate.

The two switches are checked by `metrics.Watch`, which the loop calls on the metrics it fetches;
the two modes build their run with `train.setup` / `train.train_and_evaluate`: the same model,
data and step as the training they check.
"""
from __future__ import annotations

import csv
import math
import os

import jax
import numpy as np
from absl import logging

from resnet_jax import data, metrics, records, train

# lr_find: the share of the steps the loss is averaged over, and the rise over the smoothed
# minimum at which the rate is past usable (Smith 2017, Sec. 3.3: where the loss turns up).
SMOOTHING = 0.05
DIVERGED = 4.0
# The share of the loss's fall that the edge of the usable rates may climb back (Smith 2017,
# Sec. 3.3: the upper bound is where the loss "slows, becomes ragged, or starts to" rise).
EDGE = 0.25


def overfit_batch(config, workdir: str) -> dict:
  """Trains on one batch of `config.batch_size` training images (no augmentation, no mixing,
  no label smoothing, the base learning rate throughout) for up to `babysit.overfit_steps` steps,
  until the loss is below `babysit.overfit_loss`. Writes WORKDIR/overfit_batch.json and the
  curve to TensorBoard ('overfit/loss', 'overfit/accuracy'); returns {'steps', 'loss',
  'accuracy', 'reached', 'batch_size'}."""
  config = config.copy_and_resolve_references()
  config.dataset.augment = 'none'
  config.label_smoothing = config.mixup_alpha = config.cutmix_alpha = config.ema_decay = 0.0
  config.schedule.name, config.schedule.warmup_epochs = 'constant', 0.0  # Not the run's length.
  b = config.babysit
  exp = train.setup(config)
  batch = next(iter(train.train_loader(config, exp.train_split, exp.preprocessing)))
  batch = exp.parallel.shard_batch(batch)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), train.TRAIN)
  os.makedirs(workdir, exist_ok=True)
  writer, state, result = metrics.MetricWriter(workdir), exp.state, {}
  try:
    for step in range(1, b.overfit_steps + 1):
      state, values = exp.p_train_step(state, batch, key, exp.pre_arrays)
      if step % 10 and step != b.overfit_steps:
        continue
      values = jax.device_get(exp.parallel.unreplicate(values))
      # The step's loss is of the weights before its update: one step late, never early.
      result = {'steps': step, 'loss': float(values['loss']),
                'accuracy': float(values['accuracy'])}
      writer.write(step, {'overfit/loss': result['loss'], 'overfit/accuracy': result['accuracy']})
      logging.info('overfit_batch step %d: loss %.4f accuracy %.3f', step, result['loss'],
                   result['accuracy'])
      if result['loss'] < b.overfit_loss:
        break
  finally:
    writer.close()
  result['reached'] = result['loss'] < b.overfit_loss
  result['batch_size'] = config.batch_size
  if result['reached']:
    logging.info('overfit_batch: the loss of one batch of %d fell below %g in %d steps.',
                 config.batch_size, b.overfit_loss, result['steps'])
  else:
    logging.warning('overfit_batch: the loss of one batch of %d is still %.4f after %d steps '
                    '(target %g). A net that cannot memorise one batch has a bug (labels, '
                    'inputs, a frozen layer) or a learning rate far off; strong regularisation '
                    '(config.optimizer.weight_decay, dropout) also holds it up.',
                    config.batch_size, result['loss'], result['steps'], b.overfit_loss)
  records.write_json(workdir, 'overfit_batch.json', result)
  return result


def lr_find_config(config, steps_per_epoch: int):
  """The range test's run: `babysit.lr_find_steps` steps whose rate grows exponentially from
  `babysit.lr_find_range`'s first to its last value (a constant ratio per step), every step
  logged, one evaluation at the end, non-finite steps skipped (the high end may diverge)."""
  config = config.copy_and_resolve_references()
  low, high = config.babysit.lr_find_range
  n = config.babysit.lr_find_steps
  s = config.schedule
  s.name, s.warmup_epochs, s.scale_by_batch, s.base_lr = 'exponential', 0.0, False, low
  try:  # Per epoch, continuous: ImageNet's 10,009 steps of 128 over 199 make it 1e302 for 1e6.
    s.decay_factor = (high / low) ** (steps_per_epoch / max(1, n - 1))
  except OverflowError:
    raise ValueError(f'config.babysit.lr_find_range {tuple(config.babysit.lr_find_range)} over '
                     f'{n} steps grows the rate by more than 1e308 per epoch of {steps_per_epoch} '
                     'steps: give more config.babysit.lr_find_steps or a narrower range') from None
  config.num_epochs = n / steps_per_epoch
  config.eval_every_epochs = config.num_epochs
  config.log_every_steps = 1
  config.checkpoint_every_steps = n
  config.skip_nonfinite = True
  return config


def lr_find(config, workdir: str) -> dict:
  """The learning-rate range test in WORKDIR/lr_find (a run of `lr_find_config`), then
  WORKDIR/lr_find.csv (step, lr, loss, smoothed loss), lr_find.png and lr_find.json: {'edge_lr',
  'suggested_lr', 'min_loss_lr', 'steepest_lr', 'diverged_lr', 'steps'}. The edge is the highest
  rate before the loss climbs back EDGE of its fall above its lowest (the usable range's upper
  bound, Smith 2017, Sec. 3.3); the suggestion is a tenth of it, a rate with room to spare. The
  lowest and the steepest points of the smoothed loss, and where it exceeds DIVERGED times its
  lowest, are there for comparison."""
  low, high = config.babysit.lr_find_range
  if not 0 < low < high:
    raise ValueError(f'config.babysit.lr_find_range {tuple(config.babysit.lr_find_range)} must '
                     'be (low, high) with 0 < low < high')
  if config.babysit.lr_find_steps < 10:
    raise ValueError(f'config.babysit.lr_find_steps must be >= 10, got '
                     f'{config.babysit.lr_find_steps}')
  examples = len(data.load_split(config.dataset, 'train'))
  steps_per_epoch = max(1, examples // config.batch_size)
  run = os.path.join(workdir, 'lr_find')
  train.train_and_evaluate(lr_find_config(config, steps_per_epoch), run)
  rows = read_losses(run)
  result = suggest_lr([r[1] for r in rows], [r[2] for r in rows])
  smoothed = smooth([r[2] for r in rows])
  with open(os.path.join(workdir, 'lr_find.csv'), 'w', newline='') as f:
    out = csv.writer(f)
    out.writerow(['step', 'lr', 'loss', 'smoothed_loss'])
    out.writerows([*row, s] for row, s in zip(rows, smoothed))
  plot_lr_find(rows, smoothed, result, os.path.join(workdir, 'lr_find.png'))
  logging.info('lr_find over %d steps, lr %.3g -> %.3g: suggested lr %.3g (the edge of the usable '
               'rates %.3g; smoothed loss lowest at %.3g, falling fastest at %.3g%s). '
               'WORKDIR/lr_find.csv and .png have the curve.', len(rows), low, high,
               result['suggested_lr'], result['edge_lr'], result['min_loss_lr'],
               result['steepest_lr'], '' if result['diverged_lr'] is None else
               f", diverged from {result['diverged_lr']:.3g}")
  records.write_json(workdir, 'lr_find.json', result)
  return result


def read_losses(run_dir: str) -> list[tuple[int, float, float]]:
  """(step, learning rate, loss) per logged training step of a run (metrics.read_metrics)."""
  return [(step, r['train/learning_rate'], r['train/loss'])
          for step, r in metrics.read_metrics(run_dir).items() if 'train/loss' in r]


def smooth(losses) -> list[float]:
  """`losses` averaged over a centred window of SMOOTHING of their count (at least 3 points),
  non-finite ones left out. Centred, so the curve does not lag: an online moving average (as
  fastai's finder keeps) shifts the minimum by its time constant, a decade or more at 200 steps
  over 6 decades."""
  values = np.asarray(losses, np.float64)
  half = max(1, int(SMOOTHING * len(values)) // 2)
  out = []
  for i in range(len(values)):
    window = values[max(0, i - half):i + half + 1]
    window = window[np.isfinite(window)]
    out.append(float(window.mean()) if window.size else math.nan)
  return out


def suggest_lr(lrs, losses) -> dict:
  """The range test's reading of (lr, loss) pairs in increasing lr: see `lr_find`."""
  smoothed = np.asarray(smooth(losses))
  lrs = np.asarray(lrs, np.float64)
  best = int(np.nanargmin(smoothed))
  beyond = np.nonzero((smoothed > DIVERGED * smoothed[best]) | ~np.isfinite(losses))[0]
  beyond = beyond[beyond > best]
  end = int(beyond[0]) if beyond.size else len(lrs)
  # The edge: the highest rate before the blow-up whose loss is still within EDGE of the fall
  # (first to lowest) above the lowest; a BN net's loss is flat over decades before it rises.
  level = smoothed[best] + EDGE * max(0.0, smoothed[0] - smoothed[best])
  edge = best + int(np.nonzero(smoothed[best:end] <= level)[0][-1])
  slopes = np.gradient(smoothed[:end], np.log(lrs[:end])) if end > 1 else np.zeros(1)
  steepest = int(np.argmin(slopes[:best + 1]))
  return {'suggested_lr': float(lrs[edge] / 10), 'edge_lr': float(lrs[edge]),
          'min_loss_lr': float(lrs[best]), 'steepest_lr': float(lrs[steepest]),
          'steps': len(lrs), 'diverged_lr': float(lrs[end]) if end < len(lrs) else None}


def plot_lr_find(rows, smoothed, result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  lrs, losses = [r[1] for r in rows], [r[2] for r in rows]
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(lrs, losses, alpha=0.3, label='loss')
  ax.plot(lrs, smoothed, label='smoothed')
  ax.axvline(result['suggested_lr'], color='k', ls='--',
             label=f"suggested {result['suggested_lr']:.2g}")
  ax.set(xscale='log', xlabel='learning rate', ylabel='training loss',
         title='learning-rate range test')
  finite = [v for v in smoothed if math.isfinite(v)]
  ax.set_ylim(min(finite) * 0.9, min(max(finite), DIVERGED * min(finite)) * 1.1)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
