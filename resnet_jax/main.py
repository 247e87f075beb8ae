"""The main job: `python -m resnet_jax.main --config=experiments/configs/NAME.py --workdir=DIR`.

Any config field can be overridden on the command line (`--config.model.name=cifar_resnet56`);
an unknown field is an error that names the nearest valid ones. With no --config it trains the
embedded default (scikit-learn's digits), which needs no network. The workdir records the run
(config.json, run.json): a restart with another config is refused unless the changed fields are
named in --allow_config_change, and `--mode=eval` evaluates with the stored config.
"""
import jax
from absl import app, flags, logging

from resnet_jax import compilation, metrics, records, xla_flags
from resnet_jax.configs import command_line

command_line.define_config_flag('ml_collections config file (default: the embedded digits '
                                'run); --config.SECTION.FIELD=V overrides a field.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, TensorBoard events, config.json, '
                                'run.json, results.json.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'show_config', 'overfit_batch',
                                           'lr_find'],
                          'train: train (resuming from the workdir) and evaluate; eval: evaluate '
                          "the workdir's latest checkpoint on config.dataset.eval_split with the "
                          'config it was trained with (--config optional; only the evaluation '
                          f'fields {", ".join(records.EVAL_FIELDS)} may be overridden), writing '
                          'eval_SPLIT.json; show_config: print the resolved config (the '
                          "workdir's stored one with --mode=eval semantics when --workdir has "
                          'one) and exit; overfit_batch: train on one batch until its loss is '
                          'near 0 (config.babysit.overfit_*); lr_find: the learning-rate range '
                          'test, writing lr_find.csv/.png and a suggested base lr '
                          '(config.babysit.lr_find_*). See docs/babysitting.md.')
_ALLOW = flags.DEFINE_list('allow_config_change', [],
                           'Fields (dotted, comma-separated, e.g. num_epochs,schedule.base_lr) '
                           'that may differ from the config the workdir was trained with; each '
                           'change is logged and recorded in run.json.')
_MULTIHOST = flags.DEFINE_bool('multihost', False,
                               'Call jax.distributed.initialize() first (Cloud TPU pods, several '
                               'GPU hosts); launch.sh sets it for pods, where the cluster is '
                               'detected automatically.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'With --multihost where no cluster is detected: host:port of '
                                   'process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'With --coordinator_address.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'With --coordinator_address.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]} (config fields go as --config.a.b=V)')
  if _MODE.value == 'show_config':
    config = (command_line.eval_config(_WORKDIR.value) if _WORKDIR.value
              else flags.FLAGS.config)
    print(config)
    return
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required (where the run keeps its checkpoints)')
  xla_flags.set_cpu_defaults()
  logging.get_absl_handler().addFilter(metrics.QuietLibraries())
  config = (command_line.eval_config(_WORKDIR.value) if _MODE.value == 'eval'
            else flags.FLAGS.config)
  compilation.enable_cache(config.compilation_cache_dir)  # Before the first compile.
  if _MULTIHOST.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # Logs from process 0 only.
  # After distributed init: importing builds nothing on devices.
  from resnet_jax import babysit, evaluate, train
  logging.info('JAX %s, %d processes, %d devices (%s)', jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].platform)
  if _MODE.value == 'eval':
    evaluate.evaluate_checkpoint(config, _WORKDIR.value)
  elif _MODE.value == 'overfit_batch':
    babysit.overfit_batch(config, _WORKDIR.value)
  elif _MODE.value == 'lr_find':
    babysit.lr_find(config, _WORKDIR.value)
  else:
    train.train_and_evaluate(config, _WORKDIR.value, allow_config_change=_ALLOW.value)


if __name__ == '__main__':
  flags.FLAGS.alsologtostderr = True
  app.run(main, flags_parser=command_line.parse_flags)
