"""Run records (config.json, run.json), the config check on resume and evaluation, the workdir
lock, and the command line's config errors: on real runs of the main job."""
import json
import logging
import os
import subprocess
import sys
import time

import pytest
from conftest import REPO, main_process, run_main
from tensorboard.plugins.hparams import plugin_data_pb2
from test_metrics import read_events, text_of
from test_train import make_config

from resnet_jax import records, train


def last_line(log: str) -> str:
  return [line for line in log.splitlines() if line.strip()][-1]


def test_a_restart_with_another_config_is_refused_unless_the_field_is_named(tmp_path):
  workdir = str(tmp_path)
  config = make_config(num_epochs=2.0)
  assert train.train_and_evaluate(config, workdir, stop_at_step=10)['preempted']
  stored = json.loads((tmp_path / 'config.json').read_text())
  assert stored['num_epochs'] == 2.0 and stored['model']['name'] == 'lenet5'
  run = records.read_run(workdir)
  assert run['class_names'] == [str(d) for d in range(10)]
  assert len(run['starts']) == 1 and run['starts'][0]['step'] == 0
  assert run['starts'][0]['jax'] and run['starts'][0]['devices'] == 8

  changed = make_config(num_epochs=3.0, **{'schedule.base_lr': 0.1})
  with pytest.raises(ValueError) as refused:
    train.train_and_evaluate(changed, workdir)
  message = str(refused.value)
  assert 'num_epochs: 2.0 (stored) -> 3.0 (now)' in message
  assert 'schedule.base_lr: 0.05 (stored) -> 0.1 (now)' in message
  assert '--allow_config_change=num_epochs,schedule.base_lr' in message
  assert len(records.read_run(workdir)['starts']) == 1  # Nothing ran, nothing recorded.

  with pytest.raises(ValueError, match='schedule.base_lr'):  # Both must be named.
    train.train_and_evaluate(changed, workdir, allow_config_change=['num_epochs'])
  with pytest.raises(ValueError, match='did you mean config.num_epochs'):
    train.train_and_evaluate(changed, workdir, allow_config_change=['num_epoch'])
  results = train.train_and_evaluate(changed, workdir, stop_at_step=15,
                                     allow_config_change=['num_epochs', 'schedule.base_lr'])
  assert results == {'step': 15, 'preempted': True}
  second = records.read_run(workdir)['starts'][1]
  assert second['step'] == 10
  assert second['config_changes'] == {'num_epochs': [2.0, 3.0], 'schedule.base_lr': [0.05, 0.1]}
  assert records.load_config(workdir).num_epochs == 3.0  # The config it now trains with.
  train.train_and_evaluate(changed, workdir, stop_at_step=16)  # Same config: no flag needed.


def test_eval_reads_the_stored_config_and_leaves_results_alone(tmp_path):
  workdir = str(tmp_path / 'run')
  # Training overrides that --mode=eval used to need again (a missing one evaluated wrongly).
  trained_with = ('--config.num_epochs=3', '--config.eval_every_epochs=3',
                  '--config.model.act=tanh', '--config.dataset.mean=40.0')
  done = run_main(f'--workdir={workdir}', *trained_with)
  assert done.returncode == 0, done.stderr[-3000:]
  results_file = os.path.join(workdir, 'results.json')
  trained = json.loads(open(results_file).read())
  mtime = os.stat(results_file).st_mtime_ns

  evaluated = run_main(f'--workdir={workdir}', '--mode=eval')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  scored = json.loads(open(os.path.join(workdir, 'eval_test.json')).read())
  assert scored == pytest.approx(trained)  # The trained accuracy, to the example.
  assert os.stat(results_file).st_mtime_ns == mtime

  # Evaluation fields may be set on top; training fields may not.
  other = run_main(f'--workdir={workdir}', '--mode=eval', '--config.dataset.eval_split=train',
                   '--config.batch_size=32')
  assert other.returncode == 0, other.stderr[-3000:]
  assert json.loads(open(os.path.join(workdir, 'eval_train.json')).read())['examples'] == 1437
  refused = run_main(f'--workdir={workdir}', '--mode=eval', '--config.model.act=relu')
  assert refused.returncode != 0
  assert 'only dataset.eval_split, batch_size' in last_line(refused.stderr)
  # A config given explicitly must be the one trained (here it misses the overrides).
  config_file = str(REPO / 'resnet_jax' / 'configs' / 'default.py')
  wrong = run_main(f'--workdir={workdir}', '--mode=eval', f'--config={config_file}')
  assert wrong.returncode != 0
  assert "model.act: 'tanh' (stored) -> 'relu' (now)" in wrong.stderr
  assert 'dataset.mean: [40.0] (stored) -> [50.0] (now)' in wrong.stderr
  assert 'Leave out --config' in last_line(wrong.stderr)


def test_a_second_job_on_a_live_workdir_is_refused(tmp_path):
  workdir = str(tmp_path)
  first = main_process(f'--workdir={workdir}', '--config.num_epochs=200')
  try:
    lock = tmp_path / 'lock'
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text()) and time.time() < deadline:
      time.sleep(0.2)
    holder = json.loads(lock.read_text())
    assert holder['pid'] == first.pid
    second = run_main(f'--workdir={workdir}', timeout=120)
    assert second.returncode != 0
    assert f'in use by pid {first.pid} on host {holder["host"]}' in last_line(second.stderr)
  finally:
    first.terminate()  # SIGTERM: it saves a checkpoint and exits, releasing the lock.
    _, log = first.communicate(timeout=120)
  assert first.returncode == 0, log[-3000:]
  assert lock.read_text() == ''
  with records.WorkdirLock(workdir):  # Free again.
    pass


def test_a_lock_left_by_a_dead_job_is_taken_over(tmp_path, caplog):
  script = ('import os, sys\nfrom resnet_jax import records\n'
            'records.WorkdirLock(sys.argv[1]).__enter__()\n'
            'os.kill(os.getpid(), 9)\n')  # Killed holding the lock: no clean-up ran.
  done = subprocess.run([sys.executable, '-c', script, str(tmp_path)], cwd=REPO)
  assert done.returncode == -9
  dead = json.loads((tmp_path / 'lock').read_text())
  with caplog.at_level(logging.WARNING):
    with records.WorkdirLock(str(tmp_path)):
      assert json.loads((tmp_path / 'lock').read_text())['pid'] == os.getpid()
  assert f'from pid {dead["pid"]} on host {dead["host"]}' in caplog.text
  assert 'ended without releasing it' in caplog.text


def test_config_errors_help_and_show_config():
  def main(*args):
    return subprocess.run([sys.executable, '-m', 'resnet_jax.main', *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  typo = main('--workdir=/nonexistent', '--config.optimizer.learning_rate=-1')
  assert typo.returncode == 1
  assert last_line(typo.stderr) == (
      'FATAL Flags parsing error: config.optimizer.learning_rate is not a field; did you mean '
      'config.schedule.base_lr or config.optimizer.name or config.optimizer.weight_decay? The '
      'fields of config.optimizer: b1, b2, clip_norm, decay_norm_and_bias, decay_style, eps, '
      'l1, lr_multipliers, momentum, name, nesterov, rms_decay, trust_coefficient, '
      'weight_decay.')
  helped = main('--help')
  assert helped.returncode == 0
  assert '--allow_config_change' in helped.stdout and '--mode=show_config' in helped.stdout
  shown = main('--mode=show_config', '--config.num_epochs=7')
  assert shown.returncode == 0, shown.stderr[-2000:]
  assert 'num_epochs: 7.0' in shown.stdout and 'name: lenet5' in shown.stdout


def test_eval_of_a_workdir_without_a_checkpoint_ends_with_the_error(tmp_path):
  done = run_main(f'--workdir={tmp_path}', '--mode=eval', timeout=120)
  assert done.returncode != 0
  assert last_line(done.stderr).startswith('FileNotFoundError: no checkpoint to evaluate')


def test_a_run_started_from_python_logs_its_progress_and_records_itself(tmp_path):
  """No absl app: resnet_jax.run sets up INFO logging; the event file holds the config."""
  script = (
      'import sys\n'
      'import resnet_jax\n'
      'from resnet_jax import xla_flags\n'
      'xla_flags.set_cpu_defaults()\n'
      'from resnet_jax.config import base_config\n'
      'config = base_config()\n'
      "config.update_from_flattened_dict({'num_epochs': 2.0, 'batch_size': 64,\n"
      "    'log_every_steps': 10, 'dataset.mean': (50.0,), 'dataset.std': (90.0,)})\n"
      'resnet_jax.run(config, sys.argv[1])\n')
  done = subprocess.run([sys.executable, '-c', script, str(tmp_path)], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  log = done.stderr
  for line in ('Parameters of lenet5:', 'total   61,706', 'compiling the train step ...',
               'compiled the train step in', 'the first call ran to step 1 in',
               'epoch 0.45/2 step 10/44 loss', 'eval test at step 22: accuracy',
               'Final test accuracy'):
    assert line in log, line
  assert 'orbax' not in log  # Its per-save chatter stays out of the progress log.
  assert records.load_config(str(tmp_path)).num_epochs == 2.0

  events = read_events(tmp_path)
  assert [e.step for e in events.Scalars('eval/accuracy')] == [22, 44]
  assert events.Scalars('eval/accuracy')[-1].value == pytest.approx(
      json.loads((tmp_path / 'results.json').read_text())['accuracy'])
  assert json.loads(text_of(events, 'config')[4:-4])['num_epochs'] == 2.0
  assert 'total   61,706' in text_of(events, 'parameters')
  start = plugin_data_pb2.HParamsPluginData.FromString(
      events.PluginTagToContent('hparams')['_hparams_/session_start_info'])
  assert start.session_start_info.hparams['num_epochs'].number_value == 2.0
