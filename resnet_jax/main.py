"""The main job: `python -m resnet_jax.main --config=experiments/configs/NAME.py --workdir=DIR`.

Any config field can be overridden on the command line (`--config.model.name=cifar_resnet56`);
an unknown field is an error that names it. With no --config it trains the embedded default
(scikit-learn's digits), which needs no network.
"""
import logging as logging_lib

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax import configs, xla_flags

config_flags.DEFINE_config_file('config', configs.DEFAULT, 'ml_collections config file.',
                                lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, TensorBoard events, results.json.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                          'train: train (resuming from the workdir) and evaluate; eval: evaluate '
                          "the workdir's latest checkpoint on config.dataset.eval_split.")
_MULTIHOST = flags.DEFINE_bool('multihost', False,
                               'Call jax.distributed.initialize() first (Cloud TPU pods, several '
                               'GPU hosts); launch.sh sets it for pods, where the cluster is '
                               'detected automatically.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'With --multihost where no cluster is detected: host:port of '
                                   'process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'With --coordinator_address.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'With --coordinator_address.')
flags.mark_flags_as_required(['workdir'])


class _QuietLibraries(logging_lib.Filter):
  """Keeps orbax's per-save INFO chatter out of the progress log (its warnings still show)."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    return record.levelno >= logging_lib.WARNING or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]} (config fields go as --config.a.b=V)')
  xla_flags.set_cpu_defaults()
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if _MULTIHOST.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # Logs from process 0 only.
  # After distributed init: importing builds nothing on devices.
  from resnet_jax import evaluate, train
  config = flags.FLAGS.config
  logging.info('JAX %s, %d processes, %d devices (%s)', jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].platform)
  if _MODE.value == 'eval':
    evaluate.evaluate_checkpoint(config, _WORKDIR.value)
  else:
    train.train_and_evaluate(config, _WORKDIR.value)


if __name__ == '__main__':
  flags.FLAGS.alsologtostderr = True
  app.run(main)
