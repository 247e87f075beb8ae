"""Fault injection: preemption, kills, damaged checkpoints, NaNs, a full disk, bad input.

Each fault is the real thing: a real SIGTERM or SIGKILL to a real training process, real files
damaged on disk, a real full file system (a small tmpfs).
"""
import glob
import os
import random
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from conftest import main_process, run_main
from PIL import Image

from resnet_jax import checkpoint, train
from resnet_jax.config import base_config
from resnet_jax.data import load_split

# LeNet-5 on the digits, 6 epochs of 22 steps, a checkpoint every 2 steps: many writes to hit.
RUN = ('--config.num_epochs=6', '--config.checkpoint_every_steps=2', '--config.log_every_steps=1',
       '--config.eval_every_epochs=6')


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  done = run_main(f'--workdir={workdir}', *RUN)
  assert done.returncode == 0, done.stderr[-3000:]
  return checkpoint.load_state_tree(workdir)


def assert_same_state(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def wait_for_line(process: subprocess.Popen, text: str, timeout: float = 120) -> str:
  """Reads the child's log until a line containing `text` (keeping the pipe drained)."""
  deadline = time.time() + timeout
  for line in process.stderr:
    if text in line:
      return line
    assert time.time() < deadline, f'no "{text}" in the log after {timeout} s'
  raise AssertionError(f'the process ended before logging "{text}"')


def test_sigterm_saves_exits_zero_and_resumes_bit_identical(tmp_path, uninterrupted):
  workdir = str(tmp_path)
  process = main_process(f'--workdir={workdir}', *RUN)
  wait_for_line(process, 'step 10/132')
  process.send_signal(signal.SIGTERM)
  _, rest = process.communicate(timeout=120)
  assert process.returncode == 0, rest[-3000:]
  assert 'SIGTERM: saved a checkpoint at step' in rest
  stopped_at = int(checkpoint.load_state_tree(workdir)['step'])
  assert 10 <= stopped_at < 132
  done = run_main(f'--workdir={workdir}', *RUN)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f'Resumed from {workdir}/checkpoints at step {stopped_at}' in done.stderr
  assert_same_state(checkpoint.load_state_tree(workdir), uninterrupted)


def test_kill_9_at_random_moments_loses_only_the_unsaved_steps(tmp_path, uninterrupted):
  workdir = str(tmp_path)
  rng = random.Random(0)
  for _ in range(3):
    process = main_process(f'--workdir={workdir}', *RUN)
    wait_for_line(process, 'Training lenet5')
    time.sleep(rng.uniform(0.5, 4.0))  # Compiling, stepping or in the middle of a save.
    process.kill()
    process.communicate(timeout=60)
    if glob.glob(f'{workdir}/checkpoints/[0-9]*'):
      checkpoint.load_state_tree(workdir)  # The latest complete checkpoint always loads.
  done = run_main(f'--workdir={workdir}', *RUN)
  assert done.returncode == 0, done.stderr[-3000:]
  assert_same_state(checkpoint.load_state_tree(workdir), uninterrupted)


def small_config(**fields):
  config = base_config()
  config.update_from_flattened_dict({
      'num_epochs': 0.5, 'batch_size': 64, 'checkpoint_every_steps': 4, 'log_every_steps': 4,
      'schedule.base_lr': 0.05, **fields})
  return config


def damage(checkpoint_dir: str) -> None:
  """Truncates every data file of a checkpoint's state, as a crash of the disk might."""
  for path in glob.glob(f'{checkpoint_dir}/state/**/*', recursive=True):
    if os.path.isfile(path):
      with open(path, 'r+b') as f:
        f.truncate(max(0, os.path.getsize(path) // 3))


def test_damaged_latest_checkpoint_is_named_and_fallback_resumes(tmp_path):
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(small_config(), straight)
  workdir = str(tmp_path / 'damaged')
  train.train_and_evaluate(small_config(), workdir, stop_at_step=8)
  damage(f'{workdir}/checkpoints/8')
  with pytest.raises(ValueError, match=r'checkpoints/8 cannot be read.*restore_fallback=true to '
                                       r'resume from step 4'):
    train.train_and_evaluate(small_config(), workdir)
  results = train.train_and_evaluate(small_config(restore_fallback=True), workdir)
  assert results['step'] == 11
  assert os.path.isdir(f'{workdir}/checkpoints/8.unreadable')  # Kept for a look, never loaded.
  assert_same_state(checkpoint.load_state_tree(workdir), checkpoint.load_state_tree(straight))


def test_checkpoint_of_another_model_names_the_parameter(tmp_path):
  train.train_and_evaluate(small_config(), str(tmp_path), stop_at_step=4)
  other = small_config(**{'dataset.image_size': 16, 'model.name': 'cifar_resnet20'})
  # Allowed past the config check, the checkpoint itself still refuses the new shapes.
  with pytest.raises(ValueError, match=r'checkpoints/4 was written for another model.*shape'):
    train.train_and_evaluate(other, str(tmp_path),
                             allow_config_change=('dataset.image_size', 'model.name'))


def test_nonfinite_loss_stops_naming_step_and_metric(tmp_path):
  # A learning rate of 1e30 throws the weights far out: a step soon after has a NaN loss.
  blowup = {'schedule.base_lr': 1e30, 'schedule.name': 'constant', 'model.act': 'relu',
            'optimizer.weight_decay': 0.0}
  train.train_and_evaluate(small_config(**{'model.act': 'relu'}), str(tmp_path), stop_at_step=1)
  good = checkpoint.load_state_tree(str(tmp_path))
  with pytest.raises(FloatingPointError, match=r'(loss|grad_norm) is (nan|inf) at step [234];'):
    train.train_and_evaluate(small_config(**blowup), str(tmp_path),  # Before the step-4 save.
                             allow_config_change=tuple(blowup))
  assert_same_state(checkpoint.load_state_tree(str(tmp_path)), good)
  # Or skip such updates and count them: the run finishes, the weights stay finite.
  skipping = str(tmp_path / 'skipping')
  results = train.train_and_evaluate(small_config(skip_nonfinite=True, **blowup), skipping)
  assert results['step'] == 11
  state = checkpoint.load_state_tree(skipping)
  assert 1 <= int(state['skipped_steps']) <= 10
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))


@pytest.fixture
def tiny_disk(tmp_path):
  """A 1.2 MB file system: room for one LeNet checkpoint (0.5 MB of weights and momentum)."""
  mount = tmp_path / 'tiny'
  mount.mkdir()
  if shutil.which('mount') is None:
    pytest.skip('no mount command here to make a small tmpfs')
  done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1200k', 'tmpfs', str(mount)],
                        capture_output=True, text=True)
  if done.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {done.stderr.strip()}')
  yield mount
  subprocess.run(['umount', str(mount)], check=False)


def test_full_disk_is_reported_and_the_previous_checkpoint_survives(tiny_disk):
  workdir = str(tiny_disk / 'run')
  with pytest.raises(OSError, match='disk full while saving'):
    train.train_and_evaluate(small_config(**{'keep_checkpoints': 5}), workdir)
  steps = sorted(int(s) for s in os.listdir(f'{workdir}/checkpoints') if s.isdigit())
  assert steps and steps[-1] < 11
  assert int(checkpoint.load_state_tree(workdir)['step']) == steps[-1]


def test_image_size_the_model_cannot_take_fails_before_compiling(tmp_path):
  with pytest.raises(ValueError, match=r'lenet5 cannot take \(8, 8, 1\) images.*image_size=8'):
    train.setup(small_config(**{'dataset.image_size': 8}))


def digits_folder(root, split='train', classes=('0', '1', '2'), per_class=5):
  records = load_split(base_config().dataset, 'train').records
  for c in classes:
    os.makedirs(root / split / c, exist_ok=True)
    for i in range(per_class):
      Image.fromarray(records[i]['image'][:, :, 0]).save(root / split / c / f'{i}.png')
  return root


def folder_config(root, **fields):
  config = base_config().dataset
  config.update({'source': f'folder:{root}', 'val_fraction': 0.2, **fields})
  return config


def test_empty_class_and_stray_files_are_named(tmp_path):
  root = digits_folder(tmp_path)
  os.makedirs(root / 'train' / '3')
  with pytest.raises(FileNotFoundError, match=r"class folder '.*train/3' holds no PNG"):
    load_split(folder_config(root), 'train')
  shutil.rmtree(root / 'train' / '3')
  (root / 'train' / '1' / 'notes.txt').write_text('not an image')
  (root / 'train' / '1' / '.DS_Store').write_bytes(b'\0')  # Hidden files are ignored.
  with pytest.raises(ValueError, match=r"train/1/notes.txt' is not a PNG or JPEG"):
    load_split(folder_config(root), 'train')
  assert len(load_split(folder_config(root, skip_corrupt=True), 'train')) == 12


def test_corrupt_jpeg_is_named_or_skipped(tmp_path):
  root = digits_folder(tmp_path)
  (root / 'train' / '2' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated')
  split = load_split(folder_config(root, val_fraction=0.0), 'train')
  broken = [i for i in range(len(split)) if split.records.paths[i].endswith('broken.jpg')][0]
  with pytest.raises(ValueError, match=r'cannot decode image .*train/2/broken.jpg.*skip_corrupt'):
    split.records[broken]
  assert len(load_split(folder_config(root, val_fraction=0.0, skip_corrupt=True), 'train')) == 15


def test_classes_that_differ_between_splits_are_an_error(tmp_path):
  root = digits_folder(tmp_path)
  digits_folder(tmp_path, split='val', classes=('0', '1', '7'))
  with pytest.raises(ValueError, match=r"classes of '.*val' differ.*\['2', '7'\]"):
    load_split(folder_config(root), 'val')
