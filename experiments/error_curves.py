"""Error curves of training runs, as He et al. 2015 draw them (Fig. 4 and Fig. 6): read from the
runs' metrics.jsonl, averaged over seeds, plotted per family, and the final errors compared.
Shared by experiments/degradation.py (CIFAR-10) and experiments/plain_vs_residual.py (ImageNet).
"""
from __future__ import annotations

import statistics

from resnet_jax import metrics

FIELDS = ['model', 'seed', 'step', 'train_error', 'test_error']


def error_curve(model: str, seed: int, run_dir: str) -> list[dict]:
  """One row per logged step: 1 - the training accuracy of the interval ending there, and
  1 - the validation accuracy where an evaluation ran."""
  rows = []
  for step, scalars in metrics.read_metrics(run_dir).items():
    if 'train/accuracy' not in scalars and 'eval/accuracy' not in scalars:
      continue
    error = lambda key: f'{1 - scalars[key]:.4f}' if key in scalars else ''  # noqa: E731
    rows.append({'model': model, 'seed': seed, 'step': step,
                 'train_error': error('train/accuracy'), 'test_error': error('eval/accuracy')})
  return rows


def mean_curve(rows: list[dict], model: str, column: str) -> tuple[list[int], list[float]]:
  """The seeds' mean of `column` at each step every seed logged."""
  by_step: dict[int, list[float]] = {}
  for r in rows:
    if r['model'] == model and r[column]:
      by_step.setdefault(int(r['step']), []).append(float(r[column]))
  seeds = len({r['seed'] for r in rows if r['model'] == model})
  steps = [s for s, values in sorted(by_step.items()) if len(values) == seeds]
  return steps, [statistics.fmean(by_step[s]) for s in steps]


def plot(rows: list[dict], path: str, panels) -> None:
  """He et al. 2015's Fig. 4 / Fig. 6: one panel per (model name prefix, title) of `panels`,
  each net's training error dashed and its validation error bold, shallower nets lighter."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), sharey=True)
  colours = ('tab:orange', 'tab:red', 'tab:purple', 'tab:blue')
  seeds = len({r['seed'] for r in rows})
  for ax, (family, title) in zip(axes, panels):
    depth = lambda model: int(model[len(family):])  # noqa: E731
    mine = sorted((m for m in dict.fromkeys(r['model'] for r in rows)
                   if m.startswith(family) and m[len(family):].isdigit()), key=depth)
    for index, model in enumerate(mine):
      colour = colours[min(index, len(colours) - 1)]
      # Fig. 6's style: dashed = training error, bold = test (here validation) error.
      for column, style, width, what in (('train_error', '--', 1, 'train'),
                                         ('test_error', '-', 2.2, 'val')):
        steps, errors = mean_curve(rows, model, column)
        ax.plot(steps, [100 * e for e in errors], style, lw=width, color=colour,
                label=f'{title}-{depth(model)} {what}')
    ax.set_title(f'{title} nets (mean of {seeds} seed{"s" * (seeds > 1)})')
    ax.set_xlabel('iteration')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  axes[0].set_ylabel('error (%)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def final_errors(rows: list[dict], model: str, seed: int) -> tuple[float, float]:
  """(the training error over the last quarter of the run's logged intervals, weighted alike;
  the last validation error)."""
  mine = [r for r in rows if r['model'] == model and r['seed'] == seed]
  last_step = max(int(r['step']) for r in mine)
  train_errors = [float(r['train_error']) for r in mine
                  if r['train_error'] and int(r['step']) > 0.75 * last_step]
  test_errors = [float(r['test_error']) for r in mine if r['test_error']]
  return statistics.fmean(train_errors), test_errors[-1]


def summary(rows: list[dict], effects) -> list[str]:
  """The markdown table of final errors (mean +- std over seeds) and, for each (deeper net,
  shallower net, sign) of `effects`, whether sign x (deeper - shallower) > 0 shows."""
  models = list(dict.fromkeys(r['model'] for r in rows))
  finals = {m: [final_errors(rows, m, s) for s in dict.fromkeys(r['seed'] for r in rows
                                                               if r['model'] == m)]
            for m in models}
  fmt = lambda xs: (f'{100 * statistics.fmean(xs):.2f} +- '  # noqa: E731
                    f'{100 * statistics.stdev(xs) if len(xs) > 1 else float("nan"):.2f}')
  lines = ['| net | seeds | training error (%), last quarter | validation error (%), end |',
           '|---|---|---|---|']
  for m in models:
    lines.append(f'| {m} | {len(finals[m])} | {fmt([t for t, _ in finals[m]])} | '
                 f'{fmt([v for _, v in finals[m]])} |')
  lines.append('')
  for deep, shallow, sign in effects:
    if deep not in finals or shallow not in finals:
      continue
    for index, what in ((0, 'training'), (1, 'validation')):
      gap = (statistics.fmean(e[index] for e in finals[deep])
             - statistics.fmean(e[index] for e in finals[shallow]))
      shown = 'shown' if sign * gap > 0 else 'NOT shown'
      relation = 'above' if sign > 0 else 'below'
      lines.append(f'- {deep} {relation} {shallow} in {what} error: {100 * gap:+.2f} points, '
                   f'{shown}')
  return lines
