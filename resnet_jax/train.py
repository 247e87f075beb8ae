"""Setup and THE training loop.

`setup` reads the config once and builds what a run needs (an `Experiment`): the model, the
optimizer and its schedule, the data, the mapped steps and the initial state. `loop` runs updates
with logging, evaluation, checkpoints, the non-finite check and the preemption notice; one run
(`train_and_evaluate`), vmapped trials and seed ensembles (`sweep`) all train through it.
Nothing below this module reads a whole config: each part takes its own values or section."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from etils import epath

from resnet_jax import compilation, data, metrics, optim, records, steps
from resnet_jax.checkpoint import Checkpointer, Preemption
from resnet_jax.config import check_config
from resnet_jax.convert import with_pretrained  # config.init_from
from resnet_jax.data import on_device
from resnet_jax.models import abstract_variables, create_model, forward_flops, model_spec
from resnet_jax.parallel import AXIS, DataParallel, per_process_batch_size

# Keys of the root PRNG key (one seed): 0 initialisation, 1 training steps, 2 evaluation (the
# fixed 'fmp' key), 3 data order and augmentation on device.
INIT, TRAIN, EVAL, DATA = range(4)


# ---------------------------------------------------------------------------------------------
# The config -> the parts (the only functions that read a config).


def check(config) -> None:
  """Every section of `config`, by the part that uses it, before anything is built."""
  check_config(config)
  data.check_dataset_config(config.dataset)
  optim.check_optimizer_config(config.optimizer, config.schedule, config.freeze)


def build_model(config, num_classes: int):
  """The registered model with the config's overrides (unset fields keep the model's default).

  `config.model.init` becomes the model's `kernel_init`. A model whose activation is 'selu' (set
  or by default) and whose init is not set gets 'lecun', the init SELU's fixed point assumes.
  """
  overrides = {k: v for k, v in config.model.items()
               if k not in ('name', 'sync_bn', 'init', 'bias_init') and v is not None}
  if config.model.init is not None:
    overrides['kernel_init'] = config.model.init
  if config.model.sync_bn:
    overrides['bn_axis_name'] = AXIS
  dtype = jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32
  model = create_model(config.model.name, num_classes=num_classes, dtype=dtype, **overrides)
  fields = {f.name for f in dataclasses.fields(model)}
  if (config.model.init is None and {'act', 'kernel_init'} <= fields and model.act == 'selu'
      and model.kernel_init != 'lecun'):
    # Klambauer et al. 2017, Sec. 3 ("Initialization"): weights of variance 1/fan_in keep the
    # activations at SELU's fixed point (mean 0, variance 1).
    logging.info('act=selu: kernel_init %r -> lecun (Klambauer et al. 2017)', model.kernel_init)
    model = model.clone(kernel_init='lecun')
  return model


def build_param_groups(config) -> tuple[list[str], Callable[[str], float] | None]:
  """The model's parameter paths and the learning-rate factor of each (optim.param_groups), with
  'head' the classifier its registration declares."""
  if not (config.freeze.strip() or config.optimizer.lr_multipliers.strip()):
    return [], None
  spec = model_spec(config.model.name)
  shape = (spec['input_size'], spec['input_size'], spec['in_channels'])
  model = build_model(config, spec['num_classes'])
  paths = optim.param_paths(abstract_variables(model, shape)['params'])
  return paths, optim.param_groups(config.freeze, config.optimizer.lr_multipliers, paths,
                                   spec['classifier'], config.model.name)


def build_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  return optim.learning_rate_schedule(config.schedule, batch_size=config.batch_size,
                                      num_epochs=config.num_epochs, steps_per_epoch=steps_per_epoch)


def build_optimizer(config, steps_per_epoch: int, groups=None) -> optax.GradientTransformation:
  """config.optimizer with config.schedule's rate and `groups` (build_param_groups)."""
  _, factor = build_param_groups(config) if groups is None else groups
  return optim.create_optimizer(config.optimizer, build_schedule(config, steps_per_epoch), factor)


def train_step_options(config, model, groups=None) -> dict:
  """The keyword arguments of `steps.train_step` that come from the config (and the model)."""
  groups = build_param_groups(config) if groups is None else groups
  return dict(label_smoothing=config.label_smoothing, skip_nonfinite=config.skip_nonfinite,
              aux_weight=getattr(model, 'AUX_WEIGHT', 0.0), ema_decay=config.ema_decay,
              grad_accum_steps=config.grad_accum_steps, update_ratios=config.babysit.update_ratio,
              loss_weight_decay=optim.loss_weight_decay(config.optimizer), l1=config.optimizer.l1,
              decay_norm_and_bias=config.optimizer.decay_norm_and_bias,
              mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha,
              mix_prob=config.mix_prob, mix_switch_prob=config.mix_switch_prob,
              frozen_modules=optim.frozen_modules(*groups), dtype=model.dtype)


def train_loader(config, split: data.Split, preprocessing: data.Preprocessing):
  """The run's endless, resumable stream of training batches (data.make_train_loader)."""
  d = config.dataset
  return data.make_train_loader(split, global_batch_size=config.batch_size, seed=config.seed,
                                augment=d.augment, image_size=d.image_size,
                                num_workers=d.num_workers, dataset_config=d,
                                preprocessing=preprocessing)


@dataclasses.dataclass(frozen=True)
class Periods:
  """Steps between logs, evaluations and checkpoints (calls of several steps stop at each)."""
  log: int
  eval: int
  checkpoint: int


@dataclasses.dataclass
class Experiment:
  """Everything a run builds from its config before the first step."""
  parallel: DataParallel
  model: Any
  train_split: data.Split | None
  eval_split: data.Split
  eval_split_name: str  # config.dataset.eval_split: 'test', 'validation'.
  image_shape: tuple[int, int, int]
  steps_per_epoch: int
  total_steps: int
  periods: Periods
  schedule: optax.Schedule
  train_step_fn: Callable  # The per-device step, options bound; p_train_step maps it.
  p_train_step: Callable
  p_eval_step: Callable
  eval_batches: Callable  # () -> every eval example once, in padded, masked batches.
  state: Any  # In the parallel layout.
  eval_key: Any  # The fixed 'fmp' key of every evaluation (eval_step).
  preprocessing: data.Preprocessing  # Fitted on the training split or loaded.
  pre_arrays: Any  # Its arrays, on the devices: the 'pre' argument of both steps.
  shapes: dict  # {'params', 'batch_stats'} as jax.ShapeDtypeStruct: the model traced once.


def setup(config, *, train: bool = True, workdir: str | None = None) -> Experiment:
  """Builds the run of `config`. With `workdir`, the preprocessing is loaded from (or fitted
  and saved to) WORKDIR/preprocess.npz, so evaluation and restarts use the same transform."""
  check(config)
  parallel = DataParallel(config.parallelism)
  d = config.dataset
  eval_split = data.load_split(d, d.eval_split)
  train_split = data.load_split(d, 'train') if train else None
  per_device = per_process_batch_size(config.batch_size) // len(parallel.local_devices)
  if per_device % config.grad_accum_steps:
    raise ValueError(f'config.grad_accum_steps={config.grad_accum_steps} must divide the batch of '
                     f'each device, {per_device} (config.batch_size={config.batch_size} over '
                     f'{len(parallel.devices)} devices)')
  eval_batches = functools.partial(
      data.eval_batches, eval_split, global_batch_size=config.batch_size, augment=d.augment,
      image_size=d.image_size, num_workers=d.num_workers)
  steps_per_epoch = max(1, (len(train_split) if train else config.batch_size) // config.batch_size)
  total_steps = optim.total_steps(config.num_epochs, steps_per_epoch)
  model = build_model(config, eval_split.num_classes)
  groups = build_param_groups(config)  # An abstract init of the model: once per run.
  tx = build_optimizer(config, steps_per_epoch, groups)
  channels = eval_split.records[0]['image'].shape[-1]
  image_shape = (d.image_size, d.image_size, channels)
  if len(d.mean) not in (1, channels):
    raise ValueError(f'config.dataset.mean has {len(d.mean)} values; the images have {channels} '
                     'channels (give 1 or that many)')
  root = jax.random.PRNGKey(config.seed)
  init = functools.partial(steps.create_train_state, model, tx, image_shape=image_shape,
                           ema=config.ema_decay > 0, hidden_bias=config.model.bias_init,
                           classifier=model_spec(config.model.name)['classifier'])
  try:  # Shapes only: a model that cannot take this input fails here, before compiling.
    shapes = jax.eval_shape(init, root)
  except Exception as e:
    raise ValueError(
        f'model {config.model.name} cannot take {image_shape} images (config.dataset.image_size='
        f'{d.image_size}; it was registered for {model_spec(config.model.name)["input_size"]}): '
        f'{type(e).__name__}: {e}') from e
  state = parallel.replicated_init(init, jax.random.fold_in(root, INIT))
  if config.init_from:  # On the host, then laid out again like the fresh state.
    host_state = jax.device_get(parallel.unreplicate(state))
    state = parallel.replicate(with_pretrained(host_state, config.init_from, d))
  preprocessing = data.preprocess.load_or_fit(
      None if workdir is None else os.path.join(workdir, 'preprocess.npz'), train_split, d)
  pre_arrays = jax.tree.map(np.asarray, preprocessing.arrays())
  if parallel.mode == 'shard_map':  # Placed once; pmap broadcasts a 'const' on every call.
    pre_arrays = parallel.replicate(pre_arrays)
  step_fn = functools.partial(steps.train_step, **train_step_options(config, model, groups))
  p_train = parallel.map(step_fn, ('state', 'batch', 'const', 'const'), donate_state=True)
  eval_fn = functools.partial(steps.eval_step, ema=config.ema_decay > 0, dtype=model.dtype)
  p_eval = parallel.map(eval_fn, ('state', 'batch', 'const', 'const'))
  every_eval = max(1, round(config.eval_every_epochs * steps_per_epoch))
  periods = Periods(config.log_every_steps, every_eval, config.checkpoint_every_steps)
  return Experiment(parallel, model, train_split, eval_split, d.eval_split, image_shape,
                    steps_per_epoch, total_steps, periods, build_schedule(config, steps_per_epoch),
                    step_fn, p_train, p_eval, eval_batches, state, jax.random.fold_in(root, EVAL),
                    preprocessing, pre_arrays,
                    {'params': shapes.params, 'batch_stats': shapes.batch_stats})


def evaluate(exp: Experiment, state=None, p_eval: Callable | None = None) -> dict:
  """Accuracy and mean loss over every example of the eval split, exactly once; with EMA on,
  `ema_accuracy` and `ema_loss` too. `p_eval` (default exp.p_eval_step) may be a vmapped step
  over stacked states: each score is then one value per member."""
  state = exp.state if state is None else state
  totals = exp.parallel.sum_batches(p_eval or exp.p_eval_step, exp.eval_batches(), state,
                                    exp.eval_key, exp.pre_arrays)
  return steps.scores(totals, exp.eval_split_name)


# ---------------------------------------------------------------------------------------------
# The loop.


def loop(state, *, parallel: DataParallel, start: int, end: int, total_steps: int,
         steps_per_epoch: int, num_epochs: float, batch_size: int, periods: Periods,
         max_steps_per_call: int, chunked: bool, advance: Callable, evaluate: Callable,
         save: Callable, writer: metrics.MetricWriter, schedule: optax.Schedule,
         skip_nonfinite: bool, names: list[str] | None = None,
         watch: metrics.Watch | None = None) -> tuple[Any, int, dict | None, dict | None]:
  """Trains from step `start` to `end` of a run of `total_steps`; returns (state, the step it
  stopped at, the last evaluation, the last logged training means; None where there was none).

  - `advance(state, step, n) -> (state, metrics)` runs n <= max_steps_per_call updates from
    `step` (one call); its metrics are one step's values or, when `chunked`, each step's values
    stacked on a leading axis (of max_steps_per_call; rows past n are unused).
  - `evaluate(state) -> dict` scores the eval split (steps.scores) every `periods.eval` steps and
    at the last step; `save(step, state, scores or None)` checkpoints every `periods.checkpoint`,
    at each evaluation, at `end` and on SIGTERM (then the loop stops early).
  - With `names` the state holds one member per name (vmapped trials, seed ensembles): each
    metric and score is one value per member, logged and written per member.
  - `watch(step_metrics, writer, state, evaluated)`: babysitting checks (metrics.Watch).
  A loss or gradient norm that is NaN or Inf stops the run before it reaches a checkpoint,
  unless `skip_nonfinite`.
  """
  preemption = Preemption()
  pending, window, last_eval, last_train, step = [], [], None, None, start
  progress = metrics.Progress(start=start, total_steps=total_steps, batch_size=batch_size,
                              steps_per_epoch=steps_per_epoch, num_epochs=num_epochs)
  try:
    while step < end:
      boundary = min(end, *(step // every * every + every for every in
                            (periods.log, periods.checkpoint, periods.eval)))
      n = min(max_steps_per_call, boundary - step)
      if step == start:  # The first call compiles the step: time it apart, out of the ETA.
        with compilation.Compilations() as compiled:
          state, values = advance(state, step, n)
        progress.compiled(state, step + n, compiled)
      else:
        state, values = advance(state, step, n)
      pending.append((range(step + 1, step + n + 1), values))
      step += n
      preempted = preemption.reached(step)
      log_now = step % periods.log == 0 or step == end
      eval_now = step % periods.eval == 0 or step == total_steps
      save_now = step % periods.checkpoint == 0 or step == end or eval_now or preempted
      if not (log_now or eval_now or save_now):
        continue
      # Fetch this interval's metrics (one host sync), and refuse to go on with a bad step.
      fetched = jax.device_get(parallel.unreplicate([v for _, v in pending]))
      step_metrics = [pair for (call_steps, _), v in zip(pending, fetched)
                      for pair in metrics.split_by_step(call_steps, v, chunked)]
      metrics.check_finite(step_metrics, skip_nonfinite)
      if watch:
        watch(step_metrics, writer, lambda: parallel.unreplicate(state), eval_now)
      window += [v for _, v in step_metrics]
      pending = []
      if log_now:
        mean = {k: np.mean([v[k] for v in window], axis=0)
                for k in window[-1] if k != 'skipped_steps'}
        skipped = int(np.max(window[-1]['skipped_steps']))
        lr = float(schedule(step - 1))
        speed = progress.log(step, mean, lr, skipped)
        writer.write(step, {**metrics.scalars({f'train/{k}': v for k, v in mean.items()}, names),
                            'train/learning_rate': lr, 'train/skipped_steps': skipped,
                            'train/images_per_second': speed})
        last_train, window = mean, []
      if eval_now:
        last_eval = {**evaluate(state), 'step': step}
        logging.info('eval %s at step %d: accuracy %s loss %s (%d examples)%s',
                     last_eval['split'], step, metrics.describe_values(last_eval['accuracy']),
                     metrics.describe_values(last_eval['loss']), last_eval['examples'],
                     metrics.describe_ema(last_eval))
        writer.write(step, metrics.scalars(
            {f'eval/{k}': last_eval[k] for k in ('accuracy', 'loss', 'ema_accuracy', 'ema_loss')
             if k in last_eval}, names))
        progress.restart(step)  # The evaluation's time is not the training's.
      if save_now:
        save(step, state, last_eval if eval_now else None)
      if preempted:
        logging.warning('SIGTERM: saved a checkpoint at step %d; a restart resumes there.', step)
        break
  finally:
    preemption.close()
  return state, step, last_eval, last_train


def train_and_evaluate(config, workdir: str, *, stop_at_step: int | None = None,
                       allow_config_change=()) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

  Evaluates every `eval_every_epochs` and at the end, checkpoints every `checkpoint_every_steps`,
  at every evaluation and at the end, and writes `results.json`. On SIGTERM or at `stop_at_step`
  it checkpoints and returns `{'step': ..., 'preempted': True}`; the next call resumes there.
  The workdir records the run (records.py) and is locked while it trains; a restart whose config
  differs from the stored one is refused unless each change is in `allow_config_change`. With
  the split on the devices (`config.dataset.on_device`) one call runs several steps (a SIGTERM
  is noticed at the end of a call) and the checkpoints hold no data iterator.
  """
  metrics.use_info_logging()
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # Local or a bucket (gs://...).
  with records.WorkdirLock(workdir):
    changes = records.check_config_change(workdir, config, allow_config_change)
    return _train_and_evaluate(config, workdir, stop_at_step, changes)


def _train_and_evaluate(config, workdir: str, stop_at_step: int | None, changes: dict) -> dict:
  exp = setup(config, workdir=workdir)
  d, parallel, periods = config.dataset, exp.parallel, exp.periods
  use_device, why = on_device.choose(d, exp.train_split, parallel.local_devices)
  train_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), TRAIN)
  if use_device:
    batches, max_steps = None, on_device.resolve_steps_per_call(
        config.steps_per_call, (periods.log, periods.checkpoint, periods.eval), parallel.platform)
    augment = on_device.DeviceAugment(d.augment, data.augment.AugmentOptions.from_config(d),
                                      exp.preprocessing.lighting,
                                      exp.preprocessing.zero_image(exp.image_shape))
    feed = on_device.DeviceData(parallel, exp.train_step_fn,
                                on_device.load_arrays(exp.train_split, d), augment,
                                jax.random.fold_in(jax.random.PRNGKey(config.seed), DATA),
                                batch_size=config.batch_size,
                                steps_per_epoch=exp.steps_per_epoch, max_steps=max_steps)

    def advance(state, step, n):
      return feed.train(state, n, train_key, exp.pre_arrays)
  else:
    max_steps, batches = 1, iter(train_loader(config, exp.train_split, exp.preprocessing))

    def advance(state, step, n):
      return exp.p_train_step(state, parallel.shard_batch(next(batches)), train_key,
                              exp.pre_arrays)
  def save(step, state, scores):
    # Every evaluation is checkpointed with its accuracy, so the best one can be kept.
    checkpointer.save(step, parallel.unreplicate(state), batches,
                      metrics={'accuracy': scores['accuracy']} if scores else None)

  end = exp.total_steps if stop_at_step is None else min(stop_at_step, exp.total_steps)
  path = (f'on device, up to {max_steps} steps per call' if use_device
          else 'host pipeline (Grain), one step per call')
  checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints,
                              fallback=config.restore_fallback)
  writer = None
  try:  # Closed on every path: orbax's threads must not outlive an error.
    state, start = exp.state, 0
    if checkpointer.latest_step() is not None:
      restored, start = checkpointer.restore(parallel.unreplicate(state), batches)
      state = parallel.replicate(restored)
      logging.info('Resumed from %s at step %d.', checkpointer.manager.directory, start)
    records.record_start(workdir, config, step=start, changes=changes,
                         class_names=exp.eval_split.class_names)
    logging.info('Training %s on %s: %d examples, %d steps of %d (%d per epoch) on %d devices '
                 '(%s). Data: %s, because %s.', config.model.name, exp.train_split.name,
                 len(exp.train_split), exp.total_steps, config.batch_size, exp.steps_per_epoch,
                 jax.device_count(), config.parallelism, path, why)
    writer = metrics.MetricWriter(workdir)
    writer.write_config(config)
    writer.write_parameters(  # The model as it is built, before any step.
        config.model.name, exp.shapes['params'],
        forward_flops(exp.model, exp.image_shape, compiled=False, variables=exp.shapes))
    state, step, last_eval, _ = loop(
        state, parallel=parallel, start=start, end=end, total_steps=exp.total_steps,
        steps_per_epoch=exp.steps_per_epoch, num_epochs=config.num_epochs,
        batch_size=config.batch_size, periods=periods, max_steps_per_call=max_steps,
        chunked=use_device, advance=advance, evaluate=functools.partial(evaluate, exp),
        save=save, writer=writer, schedule=exp.schedule, skip_nonfinite=config.skip_nonfinite,
        watch=metrics.Watch(config.babysit, exp.eval_split.num_classes, exp.model, inspect=(
            config.babysit.histogram_every or None) and steps.layer_inspector(
                next(iter(exp.eval_batches())), exp.preprocessing.arrays(), exp.model,
                exp.eval_key, model_spec(config.model.name)['classifier'])))
    checkpointer.wait()
  finally:
    if writer:
      writer.close()
    checkpointer.close()
  exp.state = state
  if step < exp.total_steps:
    return {'step': step, 'preempted': True}
  if last_eval is None or last_eval['step'] != step:  # Resumed after the final step: evaluate.
    last_eval = {**evaluate(exp, state), 'step': step}
  records.write_json(workdir, records.RESULTS_FILE, last_eval)  # Whole, or the old one.
  logging.info('Final %s accuracy %.4f (loss %.4f, %d examples, step %d)%s -> %s',
               *(last_eval[k] for k in ('split', 'accuracy', 'loss', 'examples')), step,
               metrics.describe_ema(last_eval), os.path.join(workdir, 'results.json'))
  return last_eval
