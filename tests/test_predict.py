"""Predictions of a trained run on image files (resnet_jax.predict), and the class names the sources
give: on a real LeNet-5 run on the digits and real PNG files."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import REPO
from PIL import Image

import resnet_jax
from resnet_jax import data, predict, steps, train
from resnet_jax.checkpoint import Checkpointer
from resnet_jax.config import base_config
from resnet_jax.configs import default

DIGITS = tuple(str(d) for d in range(10))
NUM_IMAGES = 12  # The first test records, written as PNG files.


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """The packaged default (LeNet-5 on the digits) for 3 epochs, evaluated after each, with EMA
  weights kept beside the raw ones; training writes the config.json and run.json predict reads."""
  workdir = str(tmp_path_factory.mktemp('run'))
  config = default.get_config()
  config.update_from_flattened_dict({'num_epochs': 3.0, 'eval_every_epochs': 1.0,
                                     'checkpoint_every_steps': 11, 'log_every_steps': 11,
                                     'ema_decay': 0.9})
  results = train.train_and_evaluate(config, workdir)
  return {'workdir': workdir, 'config': config, 'results': results}


@pytest.fixture(scope='module')
def images(run, tmp_path_factory):
  """The first test records as grey PNGs, in a/ (even) and b/c/ (odd): (files, labels, root)."""
  root = tmp_path_factory.mktemp('images')
  split = data.load_split(run['config'].dataset, 'test')
  files, labels = [], []
  for i in range(NUM_IMAGES):
    record = split.records[i]
    folder = root / ('a' if i % 2 == 0 else 'b/c')
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(record['image'][:, :, 0]).save(folder / f'{i:03d}.png')
    files.append(str(folder / f'{i:03d}.png'))
    labels.append(record['label'])
  return files, labels, str(root)


def evaluation_probabilities(config, workdir: str, count: int) -> np.ndarray:
  """Softmax of the first `count` eval examples as evaluation computes them: train.setup's model,
  preprocessing and fixed 'fmp' key, the Checkpointer's latest state, data.eval_batches' views,
  eval_step's forward pass."""
  exp = train.setup(config, train=False, workdir=workdir)
  checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
  state, _ = checkpointer.restore(exp.parallel.unreplicate(exp.state))
  checkpointer.close()
  batch = next(exp.eval_batches())
  x = steps.preprocess_images(jnp.asarray(batch['image'][:count]), exp.preprocessing.arrays(),
                              None, None, exp.model.dtype)
  logits = exp.model.apply({'params': state.params, 'batch_stats': state.batch_stats}, x,
                           train=False, rngs={'fmp': exp.eval_key})
  return np.asarray(jax.nn.softmax(logits.astype(jnp.float32)))


def row_probabilities(row: dict) -> np.ndarray:
  """A row's top-k as a probability vector over the digits (0 where not listed)."""
  probs = np.zeros(len(DIGITS))
  for top in row['top']:
    probs[DIGITS.index(top['class'])] = top['probability']
  return probs


# ---------------------------------------------------------------------------------------------
# Class names of the sources.


class NamedDigits(tfds.core.GeneratorBasedBuilder):
  """The test digits as a TFDS ArrayRecord dataset whose label feature names its classes."""
  VERSION = tfds.core.Version('1.0.0')
  NAMES = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
        'label': tfds.features.ClassLabel(names=self.NAMES)}))

  def _split_generators(self, dl_manager):
    return {'test': self._generate_examples()}

  def _generate_examples(self):
    records = data.load_split(base_config().dataset, 'test').records
    for i in range(100):
      yield i, records[i]


def test_each_source_names_its_classes_in_label_order(tmp_path):
  dataset = base_config().dataset
  digits = data.load_split(dataset, 'test')
  assert digits.class_names == DIGITS
  # A folder: the class folders sorted, so 'eight' is label 0 and 'zero' label 9.
  for i in range(30):
    record = digits.records[i]
    folder = tmp_path / 'folder' / 'test' / NamedDigits.NAMES[record['label']]
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(record['image'][:, :, 0]).save(folder / f'{i}.png')
  dataset.source = f'folder:{tmp_path / "folder"}'
  folder = data.load_split(dataset, 'test')
  present = sorted({NamedDigits.NAMES[digits.records[i]['label']] for i in range(30)})
  assert folder.class_names == tuple(present) and folder.class_names[0] == 'eight'
  for i in range(len(folder)):
    name = folder.class_names[folder.records[i]['label']]
    assert os.path.basename(os.path.dirname(folder.records.paths[i])) == name
  NamedDigits(data_dir=str(tmp_path / 'tfds'), file_format='array_record').download_and_prepare()
  dataset.update({'source': 'tfds:named_digits', 'data_dir': str(tmp_path / 'tfds')})
  named = data.load_split(dataset, 'test')
  assert named.class_names == NamedDigits.NAMES and named.num_classes == 10


# ---------------------------------------------------------------------------------------------
# Loading a run.


def test_loaded_weights_score_what_training_scored(run):
  workdir, results = run['workdir'], run['results']
  split = data.load_split(run['config'].dataset, 'test')
  labels = np.array([split.records[i]['label'] for i in range(len(split))])
  for ema, key in ((False, 'accuracy'), (True, 'ema_accuracy')):
    loaded = predict.load_run(workdir, 'latest', ema=ema)
    model, variables, config = loaded
    assert loaded.step == results['step'] == 66 and config.model.name == 'lenet5'
    assert type(model).__name__ == 'LeNet5' and model.act == 'relu'
    assert loaded.class_names == DIGITS and loaded.image_shape == (32, 32, 1)
    assert all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(variables))
    probs = predict.probabilities(loaded, [split.records[i]['image'] for i in range(len(split))])
    correct = int(np.sum(np.argmax(probs, -1) == labels))
    assert correct == round(results[key] * len(split)), (ema, correct, results)
  raw = predict.load_run(workdir, 'latest').variables['params']['output']['kernel']
  averaged = predict.load_run(workdir, 'latest', ema=True).variables['params']['output']['kernel']
  assert np.abs(raw - averaged).max() > 1e-4  # The EMA weights are other weights.
  # The package's own names for it, imported on first use.
  assert resnet_jax.load_run is predict.load_run and resnet_jax.run is train.train_and_evaluate


def test_best_is_the_kept_checkpoint_of_highest_eval_accuracy(run):
  workdir = run['workdir']
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    evals = {r['step']: r['eval/accuracy'] for r in map(json.loads, f) if 'eval/accuracy' in r}
  assert sorted(evals) == [22, 44, 66]
  kept = predict.checkpoint_accuracies(workdir)
  recorded = {step: accuracy for step, accuracy in kept.items() if accuracy is not None}
  for step, accuracy in recorded.items():  # What the checkpoint holds is what was evaluated.
    assert accuracy == pytest.approx(evals[step], abs=1e-9)
  expected = max(recorded, key=lambda s: (recorded[s], s)) if recorded else max(kept)
  assert predict.load_run(workdir).step == expected
  assert predict.load_run(workdir, 55).step == predict.load_run(workdir, '55').step == 55


def test_choosing_a_checkpoint():
  kept = {22: 0.91, 33: None, 44: 0.95, 55: None, 66: 0.93}
  assert predict.choose_step(kept, 'best', 'D')[0] == 44
  assert predict.choose_step(kept, 'latest', 'D')[0] == 66
  assert predict.choose_step({**kept, 66: 0.95}, 'best', 'D')[0] == 66  # A tie: the later.
  assert predict.choose_step({33: None, 55: None}, 'best', 'D') == (
      55, 'the latest: no checkpoint holds an eval accuracy')
  assert predict.choose_step(kept, '33', 'D')[0] == predict.choose_step(kept, 33, 'D')[0] == 33
  with pytest.raises(FileNotFoundError, match='no checkpoint of step 34 in D; kept: 22, 33, 44'):
    predict.choose_step(kept, 34, 'D')
  with pytest.raises(ValueError, match="checkpoint 'first' is not one of"):
    predict.choose_step(kept, 'first', 'D')
  with pytest.raises(FileNotFoundError, match='no checkpoint in D'):
    predict.choose_step({}, 'best', 'D')


# ---------------------------------------------------------------------------------------------
# Predicting.


def test_files_get_the_probabilities_evaluation_gives_them(run, images):
  files, labels, root = images
  expected = evaluation_probabilities(run['config'], run['workdir'], NUM_IMAGES)
  loaded = predict.load_run(run['workdir'], 'latest')
  rows = predict.predict(loaded, files, top_k=3)
  assert [row['file'] for row in rows] == files
  for row, want in zip(rows, expected):
    assert len(row['top']) == 3
    assert [top['class'] for top in row['top']] == [DIGITS[i] for i in np.argsort(-want)[:3]]
    listed = row_probabilities(row)
    np.testing.assert_allclose(listed[listed > 0], want[listed > 0], atol=1e-5)
  top1 = [int(row['top'][0]['class']) for row in rows]
  assert np.mean(np.array(top1) == labels) > 0.8  # A trained LeNet-5, not chance (0.1).
  # Its folder: every PNG below it, sorted by path (a/ before b/c/), the same rows.
  by_folder = predict.predict(loaded, [root], top_k=3)
  assert [row['file'] for row in by_folder] == sorted(files)
  assert {r['file']: r['top'] for r in by_folder} == {r['file']: r['top'] for r in rows}


def test_the_command_line_prints_json(run, images):
  files, _, root = images
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  done = subprocess.run([sys.executable, '-m', 'resnet_jax.predict', f'--workdir={run["workdir"]}',
                         '--checkpoint=latest', '--top_k=2', '--json', files[0], f'{root}/b'],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'step 66 (the latest)' in done.stderr
  printed = json.loads(done.stdout)
  odd = sorted(f for f in files if '/b/c/' in f)
  assert [row['file'] for row in printed] == [files[0], *odd]
  here = {r['file']: r for r in predict.predict(run['workdir'], files, 2, checkpoint='latest')}
  for row in printed:
    assert [t['class'] for t in row['top']] == [t['class'] for t in here[row['file']]['top']]
    np.testing.assert_allclose([t['probability'] for t in row['top']],
                               [t['probability'] for t in here[row['file']]['top']], atol=1e-5)


def test_bad_input_is_named(run, images, tmp_path):
  workdir = run['workdir']
  with pytest.raises(FileNotFoundError, match='nowhere.png: no such file or folder'):
    predict.predict(workdir, [images[0][0], str(tmp_path / 'nowhere.png')])
  (tmp_path / 'notes.txt').write_text('not an image')
  with pytest.raises(ValueError, match='cannot decode image .*notes.txt'):
    predict.predict(workdir, [str(tmp_path / 'notes.txt')])
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='folder .*empty holds no PNG or JPEG images'):
    predict.predict(workdir, [str(tmp_path / 'empty')])
  with pytest.raises(FileNotFoundError, match='workdir .*absent does not exist'):
    predict.load_run(str(tmp_path / 'absent'))
  with pytest.raises(FileNotFoundError, match='config.json does not exist'):
    predict.load_run(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='no checkpoint of step 7 in .*checkpoints; kept: '):
    predict.load_run(workdir, 7)
  with pytest.raises(ValueError, match='top_k must be >= 1'):
    predict.predict(workdir, images[0], top_k=0)


def test_importing_the_package_imports_no_jax():
  script = ('import sys, resnet_jax; print("jax" in sys.modules); '
            'print(resnet_jax.load_run.__module__, "jax" in sys.modules)')
  done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        cwd=REPO, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.split() == ['False', 'resnet_jax.predict', 'True']
