"""Evaluation views, checkpoint ensembles, seed ensembles trained together (resnet_jax.evaluate)."""
import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, SHARED_DATA, extract_image_folder

from resnet_jax import data, evaluate, metrics, sweep, train
from resnet_jax.checkpoint import load_state_tree
from resnet_jax.config import base_config


@pytest.fixture(scope='module')
def cifar_folder(tmp_path_factory):
  """20 real CIFAR-10 JPEGs per class from ../shared/data, as train/<class>/<image>."""
  return extract_image_folder(SHARED_DATA / 'cifar10-train-jpeg.tar.gz',
                              tmp_path_factory.mktemp('cifar'), per_class=20)


def digits_config(seed=0):
  """Half an epoch of LeNet-5 on the digits (11 steps of 64): experiments/configs/default.py's
  model and data, so its config file evaluates these checkpoints too."""
  config = base_config()
  config.update_from_flattened_dict({
      'model.name': 'lenet5', 'model.act': 'relu', 'dataset.source': 'digits',
      'dataset.mean': (50.0,), 'dataset.std': (90.0,), 'num_epochs': 0.5, 'batch_size': 64,
      'schedule.base_lr': 0.1, 'log_every_steps': 5, 'checkpoint_every_steps': 100,
      'seed': seed})
  config.dataset.on_device = 'never'  # The seed ensemble reads the host pipeline (Grain).
  return config


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A seed ensemble of two trained together, and seed 1 trained alone."""
  root = tmp_path_factory.mktemp('runs')
  rows = sweep.train_seed_ensemble(digits_config(), [0, 1], str(root / 'ensemble'))
  alone = train.train_and_evaluate(digits_config(seed=1), str(root / 'alone'))
  return {'rows': rows, 'alone': alone, 'seed_0': str(root / 'ensemble' / 'seed_0'),
          'seed_1': str(root / 'ensemble' / 'seed_1'), 'alone_dir': str(root / 'alone')}


def test_ten_crop_is_the_four_corners_the_center_and_their_flips():
  images = np.arange(2 * 6 * 7 * 3, dtype=np.int64).reshape(2, 6, 7, 3).astype(np.uint8)
  crops = evaluate.ten_crop(images, 4)
  assert crops.shape == (10, 2, 4, 4, 3)
  # Top-left, top-right, bottom-l/r, center (margins 2 and 3: offsets 1 and 2, half to even).
  windows = [(0, 0), (0, 3), (2, 0), (2, 3), (1, 2)]
  flipped = images[:, :, ::-1]
  for i, (top, left) in enumerate(windows):
    np.testing.assert_array_equal(crops[i], images[:, top:top + 4, left:left + 4])
    np.testing.assert_array_equal(crops[5 + i], flipped[:, top:top + 4, left:left + 4])
  # The flipped image's corners are the corners mirrored (its center is one pixel off here).
  np.testing.assert_array_equal(crops[6], crops[0][:, :, ::-1])
  np.testing.assert_array_equal(crops[5], crops[1][:, :, ::-1])
  # CIFAR at its own size: crops of the 4-pixel zero-padded image, as training's pad_crop.
  cifar = np.random.default_rng(0).integers(1, 256, (3, 32, 32, 3)).astype(np.uint8)
  padded = evaluate.ten_crop(cifar, 32, pad=4)
  np.testing.assert_array_equal(padded[4], cifar)
  np.testing.assert_array_equal(padded[0][:, 4:, 4:], cifar[:, :28, :28])
  assert not padded[0][:, :4].any() and not padded[3][:, :, 28:].any()
  np.testing.assert_array_equal(padded[3][:, :28, :28], cifar[:, 4:, 4:])
  assert len({padded[i].tobytes() for i in range(10)}) == 10


def test_center_views_are_the_eval_pipelines(cifar_folder):
  for augment, size in (('cifar', 32), ('imagenet', 24), ('none', 28)):
    d = base_config().dataset
    d.update_from_flattened_dict({'source': f'folder:{cifar_folder}', 'augment': augment,
                                  'image_size': size})
    split = data.load_split(d, 'train')
    batch = next(data.eval_batches(split, global_batch_size=16, augment=augment, image_size=size,
                                   num_workers=0))
    images = [split.records[i]['image'] for i in range(16)]
    recipe = evaluate.ViewRecipe.of_training(augment, pad=4)
    center = np.concatenate([evaluate.center_crop(image[None], size, recipe) for image in images])
    np.testing.assert_array_equal(center, batch['image'])
    # The 10-crop's center view is the same view; its corners differ from it.
    ten = np.stack([evaluate.eval_views(image[None], 'ten_crop', recipe=recipe, size=size)[:, 0]
                    for image in images], axis=1)
    np.testing.assert_array_equal(ten[4], batch['image'])
    assert (ten[0] != ten[4]).any() == (augment != 'none')
  # Multi-scale: the first scale (the crop size) center-cropped is a resize of the square image.
  scales = evaluate.multi_scale(np.stack(images[:4]), (24, 28, 32), 24)
  assert scales.shape == (3, 4, 24, 24, 3)
  np.testing.assert_array_equal(scales[0], evaluate.center_crop(np.stack(images[:4]), 24))
  assert evaluate.multi_scale(np.stack(images[:2]), (24, 32), 24, 'ten_crop').shape[0] == 20


def test_bad_modes_and_workdirs_are_named(tmp_path):
  with pytest.raises(ValueError, match='--eval_mode'):
    evaluate.evaluate_checkpoints(digits_config(), [str(tmp_path)], 'five_crop')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    evaluate.evaluate_checkpoints(digits_config(), [str(tmp_path / 'nowhere')])
  with pytest.raises(ValueError, match='--scales'):
    evaluate.multi_scale(np.zeros((1, 32, 32, 3), np.uint8), (24, 32), 28)
  with pytest.raises(ValueError, match='distinct seeds'):
    sweep.train_seed_ensemble(digits_config(), [1, 1], str(tmp_path))


def test_vmapped_seed_member_is_the_run_of_its_seed_alone(runs):
  together, alone = load_state_tree(runs['seed_1']), load_state_tree(runs['alone_dir'])
  assert int(together['step']) == int(alone['step']) == 11
  for a, b in zip(jax.tree.leaves(together['params']), jax.tree.leaves(alone['params'])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # The members really differ (two seeds, not one model twice).
  first = load_state_tree(runs['seed_0'])['params']['c1']['kernel']
  assert np.abs(first - together['params']['c1']['kernel']).max() > 0.05
  rows = {r['model']: r for r in runs['rows']}
  assert set(rows) == {'seed_0', 'seed_1', 'ensemble'} and rows['ensemble']['members'] == 2
  # Scored by the ensemble's center view as train.evaluate scored the run alone.
  assert rows['seed_1']['accuracy'] == pytest.approx(runs['alone']['accuracy'], abs=1e-9)
  assert rows['seed_1']['loss'] == pytest.approx(runs['alone']['loss'], rel=1e-4)
  # Jensen: -log of the averaged probability is at most the members' mean -log probability.
  assert rows['ensemble']['loss'] <= (rows['seed_0']['loss'] + rows['seed_1']['loss']) / 2


def test_ensemble_is_the_softmax_average(runs):
  config = digits_config()
  model, split = train.build_model(config, 10), data.load_split(config.dataset, 'test')
  pre = {'mean': np.float32([50.0]), 'std': np.float32([90.0])}
  members = [load_state_tree(runs[name]) for name in ('seed_0', 'seed_1')]
  variables = [{'params': m['params'], 'batch_stats': m.get('batch_stats', {})} for m in members]
  softmax = jax.jit(lambda v, x: jax.nn.softmax(
      model.apply(v, data.preprocess.apply(pre, x, np.float32), train=False)))
  images = np.stack([r['image'] for r in split.records])
  labels = np.array([r['label'] for r in split.records])
  # By hand: each member's softmax on each of the ten views, averaged over views and members.
  views = evaluate.eval_views(images[:64], 'ten_crop', size=32,
                              recipe=evaluate.ViewRecipe.of_training('cifar', pad=4))
  each = np.asarray([[softmax(v, x) for x in views] for v in variables])
  probs = np.asarray(evaluate.predict(variables, model, views, pre))
  np.testing.assert_allclose(probs, each.mean(axis=(0, 1)), rtol=1e-5, atol=1e-7)
  assert np.abs(each[0, 0] - each[1, 0]).max() > 0.05 and np.abs(each[0, 0] - each[0, 1]).max() > 0
  # Over the whole split, center views, as the seed ensemble scored its members.
  center = np.mean([softmax(v, evaluate.center_crop(images, 32)) for v in variables], axis=0)
  np.testing.assert_allclose(evaluate.predict(variables, model, evaluate.center_crop(images, 32),
                                              pre), center, rtol=1e-5, atol=1e-7)
  ensemble = runs['rows'][2]
  assert ensemble['model'] == 'ensemble' and ensemble['examples'] == len(labels) == 360
  assert ensemble['accuracy'] == pytest.approx(np.mean(center.argmax(-1) == labels), abs=1e-9)
  assert ensemble['loss'] == pytest.approx(
      -np.mean(np.log(center[np.arange(len(labels)), labels])), rel=1e-5)


def test_command_line_ensemble_of_one_checkpoint_twice_is_that_checkpoint(runs, tmp_path):
  done = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.evaluate',  # The config: the one the run stored.
       f"--workdirs={runs['alone_dir']},{runs['alone_dir']}", '--eval_mode=center',
       f'--out={tmp_path}'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert '| model | members | eval_mode | accuracy | loss | examples |' in done.stdout
  with open(tmp_path / 'evaluate.csv') as f:
    single, again, twice = csv.DictReader(f)
  assert single == again and twice['model'] == 'ensemble' and twice['members'] == '2'
  assert float(twice['accuracy']) == float(single['accuracy'])
  assert float(twice['loss']) == pytest.approx(float(single['loss']), rel=1e-6)
  with open(f"{runs['alone_dir']}/results.json") as f:  # As train.evaluate scored it.
    results = json.load(f)
  assert float(single['accuracy']) == pytest.approx(results['accuracy'], abs=1e-9)
  assert float(single['loss']) == pytest.approx(results['loss'], rel=1e-4)
  assert single['examples'] == '360' and single['eval_mode'] == 'center'
  with open(f"{runs['alone_dir']}/eval_test.json") as f:  # Each member's row, in its workdir.
    assert json.load(f)['accuracy'] == pytest.approx(results['accuracy'], abs=1e-9)


def test_ensembles_experiment_writes_its_table_and_plot(tmp_path, cifar_folder):
  done = subprocess.run([sys.executable, 'experiments/ensembles.py', f'--workdir={tmp_path}',
                         f'--data={cifar_folder}', '--members=2', '--epochs=2'],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  with open(tmp_path / 'ensembles.csv') as f:
    rows = list(csv.DictReader(f))
  assert [(r['model'], r['eval_mode']) for r in rows] == [
      ('seed_0', 'center'), ('seed_1', 'center'), ('seed_0', 'ten_crop'), ('seed_1', 'ten_crop'),
      ('ensemble', 'center'), ('ensemble', 'ten_crop')]
  assert all(0 <= float(r['accuracy']) <= 1 and int(r['examples']) == 40 for r in rows)
  for mode in ('center', 'ten_crop'):
    loss = {r['model']: float(r['loss']) for r in rows if r['eval_mode'] == mode}
    assert loss['ensemble'] <= (loss['seed_0'] + loss['seed_1']) / 2
  assert (tmp_path / 'ensembles.png').stat().st_size > 10_000


def test_seed_ensemble_trains_through_the_main_loop(runs):
  # One metrics.jsonl for the members, a tag per member, written by train.loop.
  logged = metrics.read_metrics(os.path.dirname(runs['seed_0']))
  tags = set().union(*logged.values())
  assert {'train/loss/seed_0', 'train/loss/seed_1', 'eval/accuracy/seed_0',
          'train/learning_rate'} <= tags
