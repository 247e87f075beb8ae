"""Hyperparameter search over config fields: grid or random, one results table.

  python -m resnet_jax.sweep --config=experiments/configs/default.py --workdir=DIR \\
      --sweep='schedule.base_lr=[0.01,0.03,0.1]' --sweep='optimizer.weight_decay=[0,5e-4]' \\
      [--search=grid|random --trials=N --sweep_seed=S] [--vmap=auto|on|off] [--config.x=V ...]

A `--sweep` value is a list `[a,b,c]` (grid: every combination; random: one of them per trial) or,
for random search, a distribution: `uniform(lo,hi)`, `loguniform(lo,hi)` (Bergstra & Bengio 2012:
random search finds good settings in fewer trials than a grid when few fields matter) or
`randint(lo,hi)` (inclusive).

Candidates that differ only in numbers the step uses arithmetically (learning rate, weight decay,
momentum, label smoothing, mixup alpha, seed, ...) of a small model are trained TOGETHER: their
train states are stacked and one `jax.vmap`-ed step updates them all in one program, on the same
batches. Anything else (a model name, a schedule name, a batch size), or a model over
`VMAP_MAX_PARAMS`, runs the candidates one after another, each a normal resumable run in
DIR/trial_NNN. Either way DIR/sweep.csv and DIR/sweep.md hold one row per candidate.

Trained together or alone, candidates train through `train.loop`, the main job's loop: progress
lines, TensorBoard (one tag per candidate), the non-finite check, checkpoints in DIR/trial_NNN
and a SIGTERM that saves them (the same command resumes). `train_seed_ensemble` trains one member
per seed the same way, each on its own data stream.
"""
from __future__ import annotations

import csv
import functools
import itertools
import json
import math
import os
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from etils import epath

from resnet_jax import compilation, evaluate, metrics, records, steps, train, xla_flags
from resnet_jax.checkpoint import Checkpointer
from resnet_jax.configs import command_line
from resnet_jax.models import count_params, model_spec

VMAP_MAX_PARAMS = 5_000_000

_DISTRIBUTIONS = ('uniform', 'loguniform', 'randint')


def _number(text: str) -> Any:
  text = text.strip()
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  if text.lower() in ('true', 'false'):
    return text.lower() == 'true'
  return text.strip('\'"')


def parse_spec(spec: str) -> tuple[str, Any]:
  """'a.b=[1,2]' -> ('a.b', [1, 2]); 'a.b=loguniform(1e-4,1e-1)' -> ('a.b', ('loguniform', ..))."""
  field, sep, value = spec.partition('=')
  field, value = field.strip(), value.strip()
  if not sep or not field:
    raise ValueError(f"--sweep {spec!r}: write FIELD=[v1,v2,...] or FIELD=loguniform(lo,hi)")
  listed = re.fullmatch(r'\[(.*)\]', value)
  if listed:
    values = [_number(v) for v in listed[1].split(',') if v.strip()]
    if not values:
      raise ValueError(f'--sweep {spec!r}: the list is empty')
    return field, values
  dist = re.fullmatch(r'(\w+)\((.*),(.*)\)', value)
  if dist and dist[1] in _DISTRIBUTIONS:
    lo, hi = _number(dist[2]), _number(dist[3])
    if not lo < hi or (dist[1] == 'loguniform' and lo <= 0):
      raise ValueError(f'--sweep {spec!r}: need lo < hi (and lo > 0 for loguniform)')
    return field, (dist[1], lo, hi)
  raise ValueError(f"--sweep {spec!r}: the value must be [v1,v2,...] or one of "
                   f"{', '.join(d + '(lo,hi)' for d in _DISTRIBUTIONS)}")


def candidates(specs: list[tuple[str, Any]], search: str, trials: int,
               seed: int) -> list[dict[str, Any]]:
  """The settings to try: the grid's every combination, or `trials` random draws."""
  if search == 'grid':
    ranged = [f for f, v in specs if isinstance(v, tuple)]
    if ranged:
      raise ValueError(f'--search=grid needs lists; {ranged} give a distribution '
                       '(use --search=random)')
    fields = [f for f, _ in specs]
    return [dict(zip(fields, combo)) for combo in itertools.product(*(v for _, v in specs))]
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(trials):
    draw = {}
    for field, v in specs:
      if isinstance(v, list):
        draw[field] = v[int(rng.integers(len(v)))]
      elif v[0] == 'uniform':
        draw[field] = float(rng.uniform(v[1], v[2]))
      elif v[0] == 'loguniform':
        draw[field] = float(math.exp(rng.uniform(math.log(v[1]), math.log(v[2]))))
      else:
        draw[field] = int(rng.integers(v[1], v[2] + 1))
    out.append(draw)
  return out


def with_overrides(config, overrides: dict[str, Any]):
  """A copy of `config` with dotted fields set (a misspelt field is an error naming it)."""
  config = config.copy_and_resolve_references()
  for field, value in overrides.items():
    try:
      parent, leaf = records.parent_of(config, field)
      current = parent[leaf]
    except (KeyError, AttributeError):
      raise ValueError(f'--sweep: {records.unknown_field_error(field, records.flatten(config))}'
                       ) from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    parent[leaf] = value
  return config


def write_table(workdir: str, rows: list[dict]) -> str:
  """DIR/sweep.csv and DIR/sweep.md, best accuracy first; returns the Markdown."""
  rows = sorted(rows, key=lambda r: -r['accuracy'])
  columns = list(rows[0])
  with open(os.path.join(workdir, 'sweep.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
  fmt = lambda v: f'{v:.4g}' if isinstance(v, float) else str(v)
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(fmt(r[c]) for c in columns) + ' |' for r in rows]
  table = '\n'.join(lines) + '\n'
  with open(os.path.join(workdir, 'sweep.md'), 'w') as f:
    f.write(table)
  return table


def run_sequential(config, settings: list[dict], workdir: str) -> list[dict]:
  """Each candidate as its own (resumable) run in workdir/trial_NNN."""
  rows = []
  for i, overrides in enumerate(settings):
    trial_dir = os.path.join(workdir, f'trial_{i:03d}')
    done = os.path.join(trial_dir, 'results.json')
    start = time.perf_counter()
    if os.path.exists(done):  # A rerun of the sweep skips the finished trials.
      with open(done) as f:
        results = json.load(f)
    else:
      results = train.train_and_evaluate(with_overrides(config, overrides), trial_dir)
    if results.get('preempted'):
      raise Preempted(f'trial_{i:03d} stopped at step {results["step"]} (SIGTERM) and was saved; '
                      'run the same command to resume')
    rows.append({**overrides, 'accuracy': results['accuracy'], 'loss': results['loss'],
                 'examples': results['examples'], 'seconds': time.perf_counter() - start,
                 'trial': f'trial_{i:03d}'})
  return rows


def _set_field(config, field: str, value) -> None:
  *path, leaf = field.split('.')
  for part in path:
    config = config[part]
  config[leaf] = value


class NotVmappable(Exception):
  """The candidates cannot share one vmapped program (the reason is the message)."""


class Preempted(Exception):
  """A SIGTERM stopped the trials after saving them; the same command resumes them."""


def vmapped_training(exp: train.Experiment, base, settings: list[dict], *,
                     batch_axis: int | None = None):
  """The pieces of training `settings` together: (states, keys, hp, p_step, p_eval).

  `exp` is train.setup(base), `base` the config with the first candidate's values. The swept
  fields enter the step as traced numbers `hp`: the optimizer and the step's options are rebuilt
  from them inside the vmapped function, so any field used arithmetically (learning rate, weight
  decay, label smoothing, the seed of the initialisation and of the on-device randomness) can
  differ. `states` are the stacked initial train states (in the parallel layout), `keys` each
  candidate's train key (as train_and_evaluate folds it from its seed),
  `p_step(states, hp, batch, keys, pre) -> (states, metrics)` one update of them all and
  `p_eval(states, batch, key, pre)` their evaluation sums. With `batch_axis` None every
  candidate trains on the same batch; with 1, candidate i on batch[:, i] (its own data stream,
  stacked on axis 1).
  """
  fields = sorted(settings[0])
  hp = {f: jnp.asarray([s[f] for s in settings]) for f in fields}
  base_state = jax.device_get(exp.parallel.unreplicate(exp.state))
  plain = base.to_dict()
  # Frozen and multiplied parameters come from strings no vmapped field can change: once for all.
  groups = train.build_param_groups(base)

  def candidate_config(values):
    cfg = ml_collections.ConfigDict(plain, type_safe=False)
    for field, value in values.items():
      _set_field(cfg, field, value)
    return cfg

  def init_one(values):
    cfg = candidate_config(values)
    tx = train.build_optimizer(cfg, exp.steps_per_epoch, groups)
    root = jax.random.PRNGKey(cfg.seed)
    state = steps.create_train_state(exp.model, tx, jax.random.fold_in(root, train.INIT),
                                     exp.image_shape, ema=base.ema_decay > 0,
                                     hidden_bias=cfg.model.bias_init,
                                     classifier=model_spec(base.model.name)['classifier'])
    return state.replace(tx=base_state.tx), jax.random.fold_in(root, train.TRAIN)

  def step_one(state, values, batch, key, pre):
    cfg = candidate_config(values)
    tx = train.build_optimizer(cfg, exp.steps_per_epoch, groups)
    new, metrics = steps.train_step(state.replace(tx=tx), batch, key, pre,
                                    **train.train_step_options(cfg, exp.model, groups))
    return new.replace(tx=base_state.tx), metrics

  def eval_one(state, batch, key, pre):
    return steps.eval_step(state, batch, key, pre, dtype=exp.model.dtype,
                           ema=base.ema_decay > 0)

  try:
    states, keys = jax.jit(jax.vmap(init_one))(hp)
  except (jax.errors.ConcretizationTypeError, TypeError) as e:
    raise NotVmappable(f'{", ".join(fields)} change the program, not just numbers in it: '
                       f'{type(e).__name__}') from e
  p_step = exp.parallel.map(jax.vmap(step_one, in_axes=(0, 0, batch_axis, 0, None)),
                            ('state', 'const', 'batch', 'const', 'const'), donate_state=True)
  p_eval = exp.parallel.map(jax.vmap(eval_one, in_axes=(0, None, None, None)),
                            ('state', 'batch', 'const', 'const'))
  return exp.parallel.replicate(jax.device_get(states)), keys, hp, p_step, p_eval


def train_members(config, exp: train.Experiment, names: list[str], states, p_step, p_eval,
                  next_batch, checkpointers: list[Checkpointer], loaders: list, workdir: str,
                  *, hp, keys) -> tuple[Any, dict | None, dict | None]:
  """Trains the stacked `states` of `names` through train.loop: resumes from the checkpoints
  (one per member, each with its data position), saves each member there, logs and writes each
  member's metrics in WORKDIR. Returns (states, last evaluation, last training means); raises
  Preempted when a SIGTERM stopped them early (saved)."""
  parallel = exp.parallel
  latest = [c.latest_step() for c in checkpointers]
  start = 0
  if any(step is not None for step in latest):
    if len(set(latest)) > 1:
      raise ValueError(f'the members in {workdir} stopped at different steps '
                       f'{dict(zip(names, latest))}; remove their checkpoints to start afresh')
    template = jax.tree.map(lambda x: x[0], jax.device_get(parallel.unreplicate(states)))
    restored = [c.restore(template, it) for c, it in zip(checkpointers, loaders)]
    start = restored[0][1]
    states = parallel.replicate(
        jax.tree.map(lambda *xs: np.stack(xs), *[jax.device_get(s) for s, _ in restored]))
    logging.info('Resumed %d members at step %d.', len(names), start)

  def save(step, states, scores):
    host = jax.device_get(parallel.unreplicate(states))
    for k, (checkpointer, loader) in enumerate(zip(checkpointers, loaders)):
      member_scores = None if scores is None else {'accuracy': scores['accuracy'][k]}
      checkpointer.save(step, jax.tree.map(lambda x, k=k: x[k], host), loader, member_scores)

  writer = metrics.MetricWriter(workdir)
  logging.info('Training %d members of %s together: %d steps of %d.', len(names),
               config.model.name, exp.total_steps, config.batch_size)
  try:
    states, step, last_eval, last_train = train.loop(
        states, parallel=parallel, start=start, end=exp.total_steps,
        total_steps=exp.total_steps, steps_per_epoch=exp.steps_per_epoch,
        num_epochs=config.num_epochs, batch_size=config.batch_size, periods=exp.periods,
        max_steps_per_call=1, chunked=False,
        advance=lambda s, step, n: p_step(s, hp, parallel.shard_batch(next_batch()), keys,
                                          exp.pre_arrays),
        evaluate=functools.partial(train.evaluate, exp, p_eval=p_eval), save=save,
        writer=writer, schedule=exp.schedule, skip_nonfinite=config.skip_nonfinite, names=names,
        watch=metrics.Watch(config.babysit, exp.eval_split.num_classes, exp.model))
    for checkpointer in checkpointers:
      checkpointer.wait()
  finally:
    writer.close()
    for checkpointer in checkpointers:
      checkpointer.close()
  if step < exp.total_steps:
    raise Preempted(f'the members {", ".join(names)} stopped at step {step} (SIGTERM) and were '
                    f'saved in {workdir}; run the same command to resume')
  return states, last_eval, last_train


def run_vmapped(config, settings: list[dict], workdir: str) -> list[dict]:
  """All candidates in one program: stacked train states, one vmapped step (vmapped_training),
  the same batches (the base config's order), through train.loop: each candidate is saved as a
  run in WORKDIR/trial_NNN, so an interrupted sweep resumes.
  """
  fields = sorted(settings[0])
  base = with_overrides(config, settings[0])
  if base.init_from:
    raise NotVmappable('config.init_from is set')
  exp = train.setup(base, workdir=workdir)
  params = count_params(base.model.name, exp.eval_split.num_classes)
  if params > VMAP_MAX_PARAMS:
    raise NotVmappable(f'{base.model.name} has {params:,} parameters (> {VMAP_MAX_PARAMS:,})')
  states, keys, hp, p_step, p_eval = vmapped_training(exp, base, settings)
  names = [f'trial_{i:03d}' for i in range(len(settings))]
  batches = iter(train.train_loader(base, exp.train_split, exp.preprocessing))
  # One data stream for all: each member's checkpoint holds its position.
  checkpointers = [Checkpointer(os.path.join(workdir, name), keep=base.keep_checkpoints,
                                fallback=base.restore_fallback) for name in names]
  for name, overrides, checkpointer in zip(names, settings, checkpointers):
    trial = with_overrides(base, overrides)  # Each trial's workdir records its own config.
    trial_dir = os.path.join(workdir, name)
    records.check_config_change(trial_dir, trial)
    records.record_start(trial_dir, trial, step=checkpointer.latest_step() or 0, changes={},
                         class_names=exp.eval_split.class_names)
  start = time.perf_counter()
  try:
    states, last_eval, last_train = train_members(
        base, exp, names, states, p_step, p_eval, lambda: next(batches), checkpointers,
        [batches] + [None] * (len(names) - 1), workdir, hp=hp, keys=keys)
  except (jax.errors.ConcretizationTypeError, TypeError) as e:
    raise NotVmappable(f'{", ".join(fields)} change the train step, not just numbers in it: '
                       f'{type(e).__name__}') from e
  if last_eval is None:  # Resumed after the last step.
    last_eval = train.evaluate(exp, states, p_eval)
  seconds = time.perf_counter() - start
  return [{**overrides, 'accuracy': last_eval['accuracy'][i], 'loss': last_eval['loss'][i],
           'train_loss': float(np.asarray(last_train['loss'])[i]) if last_train else float('nan'),
           'examples': last_eval['examples'], 'seconds': seconds, 'trial': 'vmap'}
          for i, overrides in enumerate(settings)]


def train_seed_ensemble(config, seeds: Sequence[int], workdir: str, *,
                        modes: Sequence[str] = ('center',), scales: Sequence[int] | None = None,
                        scale_crop: str = 'center') -> list[dict]:
  """Trains one member per seed, all together: stacked train states, one vmapped update per
  step (vmapped_training), one jitted program, through train.loop.

  Member k is the run train_and_evaluate makes with config.seed = seeds[k]: its own
  initialisation, dropout (and other on-device) keys, data order and augmentation, from its own
  stream of the host pipeline (Grain; the k streams are stacked on axis 1 of the batch; the
  on-device data path is not used: the lone run to compare with has on_device='never'). Each is
  saved as such a run in WORKDIR/seed_S (checkpoints with its data position, preprocess.npz) every
  `checkpoint_every_steps` and at the end, so it resumes, and `--mode=eval` or
  evaluate.evaluate_checkpoints reads it. Returns evaluate.evaluate_members' rows for each of
  `modes`.
  """
  seeds = [int(s) for s in seeds]
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f'seeds {seeds}: give one or more distinct seeds')
  bad = [mode for mode in modes if mode not in evaluate.EVAL_MODES]
  if bad:
    raise ValueError(f'eval modes {bad} are not among {evaluate.EVAL_MODES}')
  if config.init_from:
    raise ValueError('config.init_from is set: the members of a seed ensemble start from their '
                     "seeds' initialisations; unset it")
  if config.dataset.on_device == 'always':
    raise ValueError("config.dataset.on_device='always': a seed ensemble's members read the host "
                     "pipeline; use 'auto' or 'never'")
  # Members read the host pipeline: their runs alone are then the same with 'never'.
  config = with_overrides(config, {'dataset.on_device': 'never'})
  configs = [with_overrides(config, {'seed': s}) for s in seeds]
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  exp = train.setup(configs[0], workdir=workdir)
  states, keys, hp, p_step, p_eval = vmapped_training(
      exp, configs[0], [{'seed': s} for s in seeds], batch_axis=1)
  names = [f'seed_{s}' for s in seeds]
  loaders = [iter(train.train_loader(c, exp.train_split, exp.preprocessing)) for c in configs]
  checkpointers = [Checkpointer(os.path.join(workdir, name), keep=config.keep_checkpoints,
                                fallback=config.restore_fallback) for name in names]
  if jax.process_index() == 0:
    for name in names:
      exp.preprocessing.save(os.path.join(workdir, name, 'preprocess.npz'))

  def next_batch():
    batches = [next(it) for it in loaders]
    return {k: np.stack([b[k] for b in batches], axis=1) for k in batches[0]}

  states, _, _ = train_members(config, exp, names, states, p_step, p_eval, next_batch,
                               checkpointers, loaders, workdir, hp=hp, keys=keys)
  host = jax.device_get(exp.parallel.unreplicate(states))
  variables_list = [{'params': jax.tree.map(lambda x, k=k: x[k], host.params),
                     'batch_stats': jax.tree.map(lambda x, k=k: x[k], host.batch_stats)}
                    for k in range(len(seeds))]
  pre = jax.tree.map(np.asarray, exp.preprocessing.arrays())
  rows = []
  for mode in modes:
    rows += evaluate.evaluate_members(config, exp, names, variables_list, [pre] * len(seeds),
                                      mode, scales=scales, scale_crop=scale_crop)
  return rows


def run_sweep(config, specs: list[str], workdir: str, *, search: str = 'grid', trials: int = 8,
              sweep_seed: int = 0, vmap: str = 'auto') -> list[dict]:
  """Trains every candidate and writes WORKDIR/sweep.csv and sweep.md; returns the rows."""
  if not specs:
    raise ValueError('--sweep: give at least one FIELD=[v1,v2,...]')
  settings = candidates([parse_spec(s) for s in specs], search, trials, sweep_seed)
  if config.dataset.on_device == 'auto':
    # The vmapped candidates read the host pipeline: so do the sequential ones, and a candidate
    # trains the same way in either mode.
    config.dataset.on_device = 'never'
  for overrides in settings:  # Every field must exist before anything trains.
    with_overrides(config, overrides)
  os.makedirs(workdir, exist_ok=True)
  with records.WorkdirLock(workdir):  # One sweep per workdir; its trials lock their own.
    rows = _run_candidates(config, settings, workdir, vmap)
  table = write_table(workdir, rows)
  print(table)
  return rows


def _run_candidates(config, settings: list[dict], workdir: str, vmap: str) -> list[dict]:
  rows = None
  if vmap != 'off' and len(settings) > 1:
    try:
      rows = run_vmapped(config, settings, workdir)
      logging.info('Trained %d candidates together with vmap.', len(settings))
    except NotVmappable as e:
      if vmap == 'on':
        raise ValueError(f'--vmap=on: these candidates cannot be trained together ({e})') from e
      logging.info('Candidates one after another: %s', e)
  if rows is None:
    rows = run_sequential(config, settings, workdir)
  return rows


def define_flags() -> None:
  """The command line's flags (defined only when run as a program: resnet_jax.main has its own
  --config and --workdir, and both modules may be imported in one process)."""
  command_line.define_config_flag(
      'Base experiment config; --config.a.b=V overrides fields for every candidate.')
  flags.DEFINE_string('workdir', None, 'Directory for the sweep table and the trials.')
  flags.DEFINE_multi_string('sweep', [], 'FIELD=[v1,v2,...] or FIELD=loguniform(lo,hi)')
  flags.DEFINE_enum('search', 'grid', ['grid', 'random'], 'Grid or random search.')
  flags.DEFINE_integer('trials', 8, 'Random search: the number of candidates.')
  flags.DEFINE_integer('sweep_seed', 0, 'Random search: the seed of the draws.')
  flags.DEFINE_enum('vmap', 'auto', ['auto', 'on', 'off'],
                    'Train the candidates together with vmap (auto: when they can be).')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  if not f.workdir:
    raise app.UsageError('--workdir is required')
  xla_flags.set_cpu_defaults()
  compilation.enable_cache(f.config.compilation_cache_dir)  # Trials of one program compile once.
  try:
    run_sweep(f.config, f.sweep, f.workdir, search=f.search, trials=f.trials,
              sweep_seed=f.sweep_seed, vmap=f.vmap)
  except Preempted as e:
    logging.warning('%s', e)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=command_line.parse_flags)
