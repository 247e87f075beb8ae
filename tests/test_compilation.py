"""Compilations: each step compiles once in a run, and a restart loads them from the cache."""
import sys

import pytest
from conftest import REPO

from resnet_jax import compilation, sweep, train
from resnet_jax.bench import restart
from resnet_jax.config import base_config


def digits_config(on_device: str):
  """Two epochs of LeNet-5 on the digits in batches of 64, evaluated after each: the test split's
  360 examples end in a partial batch of 40."""
  config = base_config()
  config.update_from_flattened_dict({
      'model.act': 'relu', 'dataset.mean': (50.0,), 'dataset.std': (90.0,), 'num_epochs': 2.0,
      'batch_size': 64, 'eval_every_epochs': 1.0, 'log_every_steps': 5,
      'dataset.on_device': on_device})
  return config


@pytest.mark.parametrize('on_device,step_name', [('never', 'jit(train_step)'),
                                                 ('always', 'jit(run)')])
def test_a_run_compiles_its_train_and_eval_steps_once(tmp_path, on_device, step_name):
  with compilation.Compilations() as compiled:
    results = train.train_and_evaluate(digits_config(on_device), str(tmp_path))
  assert results['examples'] == 360 and 360 % 64 == 40  # The last eval batch is padded.
  assert compiled.compiled[step_name] == 1, compiled.compiled
  assert compiled.compiled['jit(eval_step)'] == 1, compiled.compiled
  # On device the state goes from the first call into the next ones: a weakly typed epoch or
  # step coming out of the first call used to compile the program a second time.
  assert not [name for name, n in compiled.compiled.items() if n > 1 and 'step' in name
              or name == 'jit(run)' and n > 1]


def test_vmapped_trials_and_seed_members_share_one_compiled_step(tmp_path):
  config = digits_config('never')
  config.num_epochs, config.eval_every_epochs = 0.5, 0.5
  with compilation.Compilations() as compiled:
    sweep.run_sweep(config, ['schedule.base_lr=[0.02,0.1]', 'optimizer.weight_decay=[1e-4,5e-4]'],
                    str(tmp_path / 'sweep'), vmap='on')
  assert compiled.compiled['jit(step_one)'] == 1, compiled.compiled
  with compilation.Compilations() as compiled:
    sweep.train_seed_ensemble(config, [0, 1, 2], str(tmp_path / 'ensemble'))
  steps = {k: n for k, n in compiled.compiled.items() if 'step' in k}
  assert steps and set(steps.values()) == {1}, steps


def main_command(workdir, cache, *more):
  return [sys.executable, '-m', 'resnet_jax.main', f'--workdir={workdir}',
          '--config.num_epochs=50', '--config.batch_size=64',
          f'--config.compilation_cache_dir={cache}', *more]


def test_a_restart_loads_its_train_step_from_the_cache_of_the_same_topology(tmp_path):
  """Fresh on 8 devices (compiled, written), resumed on 8 (loaded), resumed on 1 (another
  device assignment: another entry, compiled)."""
  cache, workdir = tmp_path / 'cache', tmp_path / 'run'
  eight = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  fresh = restart.time_to_first_step(main_command(workdir, cache), 300, eight)
  assert 'compiled' in fresh and 'loaded' not in fresh, fresh['log'][-2000:]
  assert f'XLA compilation cache: {cache}' in fresh['log']
  assert any(cache.iterdir())
  warm = restart.time_to_first_step(main_command(workdir, cache), 300, eight)
  assert 'Resumed from' in warm['log'] and 'loaded' in warm, warm['log'][-2000:]
  assert warm['loaded'] < fresh['compiled']  # Reading a file, not running XLA's compiler.
  one = restart.time_to_first_step(main_command(workdir, cache), 300,
                                   {'XLA_FLAGS': '--xla_force_host_platform_device_count=1'})
  assert 'Resumed from' in one['log'] and 'compiled' in one, one['log'][-2000:]
  off = restart.time_to_first_step(main_command(workdir, ''), 300, eight)
  assert 'compiled' in off and 'XLA compilation cache' not in off['log']
  assert 'config.compilation_cache_dir changed' in off['log']  # Allowed: not what is trained.


def test_sequential_trials_of_one_program_load_it_from_the_cache(tmp_path):
  """Seeds are arguments of the step, not constants in it: trial 2 runs trial 1's program."""
  import subprocess
  done = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.sweep', f'--workdir={tmp_path / "sweep"}',
       '--sweep=seed=[0,1]', '--vmap=off', '--config.num_epochs=0.3',
       '--config.dataset.on_device=never',
       f'--config.compilation_cache_dir={tmp_path / "cache"}'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  firsts = [line for line in done.stderr.splitlines() if 'the first call ran to step' in line]
  assert len(firsts) == 2, firsts
  assert 'compiled the train step' in firsts[0] and 'loaded the compiled train step' in firsts[1]


def test_an_unwritable_cache_folder_names_the_field(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  with pytest.raises(ValueError, match="config.compilation_cache_dir=.*'' to turn the cache off"):
    compilation.enable_cache(str(blocker / 'cache'))
