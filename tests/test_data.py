"""Data sources, augmentation and the Grain pipeline, on real data."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from resnet_jax.config import base_config
from resnet_jax.data import augment, eval_batches, load_split, make_train_loader


def dataset_config(**fields):
  config = base_config().dataset
  config.update(fields)
  return config


def take(loader_iterator, n):
  return [next(loader_iterator) for _ in range(n)]


def test_digits_splits_are_disjoint_and_complete():
  train = load_split(dataset_config(source='digits'), 'train')
  test = load_split(dataset_config(source='digits'), 'test')
  assert (len(train), len(test)) == (1437, 360)
  assert train.num_classes == 10
  example = train.records[0]
  assert example['image'].shape == (8, 8, 1) and example['image'].dtype == np.uint8
  assert example['image'].max() > 200  # 0..16 grey levels rescaled to 0..255.
  carved = dataset_config(source='digits', val_fraction=0.2)
  rest, val = load_split(carved, 'train'), load_split(carved, 'validation')
  assert len(rest) + len(val) == 1437 and len(val) == 287
  flat = lambda split: {split.records[i]['image'].tobytes() for i in range(len(split))}
  assert not flat(rest) & flat(val) - flat(test)  # No training image doubles as validation.


def test_validation_without_fraction_is_a_clear_error():
  with pytest.raises(ValueError, match='val_fraction'):
    load_split(dataset_config(source='digits'), 'validation')


def test_unknown_source_and_split_name_the_flag():
  with pytest.raises(ValueError, match="config.dataset.source 'mnist'"):
    load_split(dataset_config(source='mnist'), 'train')
  with pytest.raises(ValueError, match="split 'dev' not found"):
    load_split(dataset_config(source='digits'), 'dev')


def test_folder_source_reads_real_mnist_pngs(mnist_folder):
  config = dataset_config(source=f'folder:{mnist_folder}', val_fraction=0.1)
  train, val = load_split(config, 'train'), load_split(config, 'validation')
  assert train.num_classes == 10
  assert (len(train), len(val)) == (1800, 200)
  record = train.records[len(train) - 1]
  assert record['image'].shape == (28, 28, 1) and record['image'].dtype == np.uint8
  assert record['label'] == 9  # Class folders sorted: '0'..'9'.
  # The carve is fixed: the same files land in validation whatever the run's seed.
  again = load_split(config, 'validation')
  assert [again.records[i]['label'] for i in range(20)] == [val.records[i]['label']
                                                             for i in range(20)]


def test_missing_folder_says_what_layout_is_expected(tmp_path):
  with pytest.raises(FileNotFoundError, match='PATH/<split>/<class>/<image>'):
    load_split(dataset_config(source=f'folder:{tmp_path}/nothing'), 'train')


class TinyDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's digits written as a real TFDS ArrayRecord dataset (no TensorFlow needed)."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
        'label': tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples('train'), 'test': self._generate_examples('test')}

  def _generate_examples(self, split):
    records = load_split(dataset_config(source='digits'), split).records
    for i in range(len(records)):
      yield i, records[i]


def test_tfds_source_reads_array_record(tmp_path):
  TinyDigits(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  config = dataset_config(source='tfds:tiny_digits', data_dir=str(tmp_path), val_fraction=0.1)
  train = load_split(config, 'train')
  val = load_split(config, 'validation')
  test = load_split(config, 'test')
  assert train.num_classes == 10
  assert (len(train), len(val), len(test)) == (1293, 144, 360)
  as_set = lambda records: sorted((records[i]['image'].tobytes(), records[i]['label'])
                                  for i in range(len(records)))
  # TFDS stores examples in its own (hashed) order: compare contents, not positions.
  assert as_set(test.records) == as_set(load_split(dataset_config(source='digits'), 'test').records)


def test_tfds_not_prepared_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match='tfds build mnist --file_format=array_record'):
    load_split(dataset_config(source='tfds:mnist', data_dir=str(tmp_path)), 'train')


def test_same_seed_same_batches_and_state_resumes_exactly():
  split = load_split(dataset_config(source='digits'), 'train')
  make = lambda seed: make_train_loader(split, global_batch_size=64, seed=seed, augment='cifar',
                                        image_size=16, num_workers=0)
  first, second = take(iter(make(0)), 30), take(iter(make(0)), 30)  # 30 > one epoch (22).
  for a, b in zip(first, second):
    assert np.array_equal(a['image'], b['image']) and np.array_equal(a['label'], b['label'])
  other = take(iter(make(1)), 1)[0]
  assert not np.array_equal(other['label'], first[0]['label'])
  # Epochs are reshuffled: epoch 2 does not repeat epoch 1's order.
  assert not np.array_equal(first[0]['label'], first[22]['label'])
  iterator = iter(make(0))
  take(iterator, 7)
  state = iterator.get_state()
  resumed = iter(make(0))
  resumed.set_state(state)
  for a, b in zip(take(resumed, 5), first[7:12]):
    assert np.array_equal(a['image'], b['image'])


def test_eval_batches_see_every_example_once():
  split = load_split(dataset_config(source='digits'), 'test')  # 360 = 5 * 64 + 40.
  batches = list(eval_batches(split, global_batch_size=64, augment='none', image_size=8,
                              num_workers=0))
  assert len(batches) == 6
  assert sum(b['mask'].sum() for b in batches) == 360
  labels = np.concatenate([b['label'][b['mask'] > 0] for b in batches])
  assert np.array_equal(labels, [split.records[i]['label'] for i in range(360)])
  assert batches[-1]['mask'][40:].sum() == 0 and batches[-1]['mask'][:40].all()


def test_cifar_augmentation_crops_and_flips_within_padding():
  image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
  rng = np.random.default_rng(0)
  crops = [augment.pad_and_random_crop(image, rng, 32, 4) for _ in range(50)]
  assert all(c.shape == (32, 32, 3) for c in crops)
  assert any(not np.array_equal(c, image) for c in crops)
  # Every crop is the image shifted by at most 4 pixels: some 24x24 window is untouched.
  assert all(np.isin(c[4:28, 4:28], image).all() for c in crops)
  flips = [augment.random_flip(image, rng) for _ in range(50)]
  assert 10 < sum(np.array_equal(f, image[:, ::-1]) for f in flips) < 40


def test_imagenet_crops_have_the_requested_size():
  image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
  rng = np.random.default_rng(1)
  assert augment.random_resized_crop(image, rng, 224).shape == (224, 224, 3)
  center = augment.center_crop(image, 224, crop_fraction=0.875)
  assert center.shape == (224, 224, 3)
  with pytest.raises(ValueError, match='config.dataset.augment'):
    augment.TrainAugment('autoaugment', 224)


def test_worker_processes_give_the_same_batches():
  split = load_split(dataset_config(source='digits'), 'train')
  make = lambda workers: iter(make_train_loader(split, global_batch_size=64, seed=3,
                                                augment='cifar', image_size=16,
                                                num_workers=workers))
  in_process, by_workers = take(make(0), 4), take(make(2), 4)
  for a, b in zip(in_process, by_workers):
    assert np.array_equal(a['image'], b['image']) and np.array_equal(a['label'], b['label'])


def test_unknown_tfds_name_suggests_the_closest():
  with pytest.raises(ValueError, match="'tfds:cifar_10': no such TFDS dataset; did you mean cifar"):
    load_split(dataset_config(source='tfds:cifar_10'), 'train')
