"""The training split on the devices: the jnp ops against augment.py's, the choice, 8 devices
against 1, determinism and exact resume inside a call, learning on real MNIST."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED_DATA, extract_image_folder

from resnet_jax import checkpoint, steps, train
from resnet_jax.config import base_config
from resnet_jax.data import augment, load_split, make_train_loader, on_device
from resnet_jax.data.augment import AugmentOptions
from resnet_jax.parallel import DataParallel


def make_config(**fields):
  """A small digits run; `fields` are dotted config paths, as on the command line."""
  config = base_config()
  config.update_from_flattened_dict({
      'model.name': 'lenet5', 'dataset.source': 'digits', 'dataset.image_size': 32,
      'num_epochs': 1.0, 'batch_size': 64, 'schedule.base_lr': 0.05, 'log_every_steps': 5,
      'checkpoint_every_steps': 5, 'eval_every_epochs': 1.0, **fields})
  return config


@pytest.fixture(scope='module')
def cifar_images(tmp_path_factory):
  """Eight real CIFAR-10 JPEGs, uint8 32x32x3."""
  folder = extract_image_folder(SHARED_DATA / 'cifar10-train-jpeg.tar.gz',
                                tmp_path_factory.mktemp('cifar'), per_class=1)
  dataset = base_config().dataset
  dataset.source = f'folder:{folder}'
  records = load_split(dataset, 'train').records
  return [records[i]['image'] for i in range(8)]


def test_jnp_ops_equal_the_numpy_ops_for_the_same_draws(cifar_images):
  digits = load_split(base_config().dataset, 'train').records
  grey = [augment.resize(digits[i]['image'], 32, 32) for i in range(4)]
  pixels = np.concatenate([x.reshape(-1, 3) for x in cifar_images]) / 255.0
  eigval, eigvec = np.linalg.eigh(np.cov(pixels, rowvar=False))
  eigval, eigvec = eigval[::-1].astype(np.float32), eigvec[:, ::-1].astype(np.float32)
  pad_crop = jax.jit(on_device.pad_crop, static_argnums=3)
  cutout = jax.jit(on_device.cutout, static_argnums=3)
  colour_jitter, pca_lighting = jax.jit(on_device.colour_jitter), jax.jit(on_device.pca_lighting)
  close = []  # Colour ops: float32 sums in another order may round a .5 the other way.
  for seed, image in enumerate(cifar_images + grey):
    rng, replay = np.random.default_rng(seed), np.random.default_rng(seed)
    host = augment.pad_and_random_crop(image, rng, 32, 4)
    top, left = replay.integers(0, 9), replay.integers(0, 9)
    np.testing.assert_array_equal(pad_crop(image, top, left, 4), host)
    host = augment.random_flip(image, rng)
    np.testing.assert_array_equal(on_device.flip(image, replay.random() < 0.5), host)
    fill = np.full(image.shape, 7 + seed, np.uint8)
    for _ in range(6):  # Centres anywhere, near the borders too: the square is clipped there.
      host = augment.cutout(image, rng, 16, fill)
      cy, cx = replay.integers(0, 32), replay.integers(0, 32)
      np.testing.assert_array_equal(cutout(image, cy, cx, 16, fill), host)
    # colour_jitter, with one strength 0 (left out, as the host's draws leave it out).
    strengths = (0.4, 0.0, 0.4) if seed % 2 else (0.4, 0.4, 0.4)
    host = augment.colour_jitter(image, rng, *strengths)
    assert not np.array_equal(host, image)
    drawn = augment.colour_jitter_factors(replay, *strengths)
    order = [on_device.COLOUR_ADJUSTMENTS.index(name) for name, _ in drawn]
    order += [i for i in range(3) if i not in order]  # The rest have factor 1: unchanged.
    factors = np.ones(3, np.float32)
    for name, factor in drawn:
      factors[on_device.COLOUR_ADJUSTMENTS.index(name)] = factor
    close.append((colour_jitter(image, np.array(order), factors), host))
    if image.shape[-1] == 3:
      host = augment.pca_lighting(image, rng, eigval, eigvec, 0.1)
      alpha = replay.normal(0.0, 0.1, 3).astype(np.float32)
      close.append((pca_lighting(image, alpha, eigval, eigvec), host))
  for ours, theirs in close:
    diff = np.abs(np.asarray(ours, np.int32) - theirs.astype(np.int32))
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.99


def test_auto_chooses_by_ops_and_always_with_a_resizing_op_names_the_field():
  split = load_split(base_config().dataset, 'train')
  devices = jax.local_devices()
  assert on_device.memory_cap(devices) == on_device.CPU_BYTES  # CPU reports no memory limit.
  chosen, why = on_device.choose(make_config(**{'dataset.augment': 'cifar'}).dataset, split,
                                 devices)
  assert chosen and 'fits' in why
  assert on_device.split_bytes(split, 32) == 1437 * (32 * 32 + 4)
  chosen, why = on_device.choose(make_config(**{'dataset.augment': 'imagenet'}).dataset, split,
                                 devices)
  assert not chosen and 'random_resized_crop' in why
  assert not on_device.choose(make_config(**{'dataset.on_device': 'never'}).dataset, split,
                              devices)[0]
  with pytest.raises(ValueError, match=r"config.dataset.augment 'imagenet'.*random_resized_crop"):
    train.check(make_config(**{'dataset.augment': 'imagenet', 'dataset.on_device': 'always'}))
  with pytest.raises(ValueError, match="config.dataset.on_device 'gpu' is not one of"):
    train.check(make_config(**{'dataset.on_device': 'gpu'}))
  with pytest.raises(ValueError, match='config.steps_per_call must be >= 0'):
    train.check(make_config(steps_per_call=-1))


def train_on_device(mode: str, devices, state, calls: tuple[int, ...] = (4, 3)):
  """LeNet-5 on digits from the host `state`, augmented on device, batch 64, 3 steps per 'epoch'
  (so 7 steps see three orders), in `calls` of so many steps: (host params, each step's loss)."""
  config = make_config(**{'dataset.augment': 'cifar,cutout'})
  d = config.dataset
  parallel = DataParallel(mode, devices=devices)
  step_fn = functools.partial(steps.train_step, mean=(50.0,), std=(90.0,), dtype=jnp.float32)
  device_augment = on_device.DeviceAugment(d.augment, AugmentOptions.from_config(d),
                                           fill=np.zeros((32, 32, 1), np.uint8))
  arrays = on_device.load_arrays(load_split(d, 'train'), d)
  feed = on_device.DeviceData(parallel, step_fn, arrays, device_augment, jax.random.PRNGKey(3),
                              batch_size=64, steps_per_epoch=3, max_steps=max(calls))
  state, losses = parallel.replicate(state), []
  for n in calls:
    state, metrics = feed.train(state, n, jax.random.PRNGKey(1), None)
    losses += list(jax.device_get(parallel.unreplicate(metrics))['loss'][:n])
  return jax.device_get(parallel.unreplicate(state)).params, np.array(losses)


def test_eight_devices_match_one_device_on_the_same_global_batches():
  config = make_config()
  model, tx = train.build_model(config, 10), train.build_optimizer(config, 3)
  init = jax.jit(functools.partial(steps.create_train_state, model, tx, image_shape=(32, 32, 1)))
  state = jax.device_get(init(jax.random.PRNGKey(0)))
  one, loss1 = train_on_device('shard_map', jax.devices()[:1], state)
  for mode in ('shard_map', 'pmap'):
    eight, loss8 = train_on_device(mode, jax.devices(), state)
    assert len(jax.devices()) == 8 and len(loss8) == 7
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), eight, one)
  assert loss1[-1] < loss1[0]


def test_same_seed_gives_the_same_parameters_across_a_stop_inside_a_call(tmp_path):
  # 11 steps; straight: calls of 5, 5, 1 (log and checkpoint every 5). Then the same seed
  # stopped at step 7 (inside the call 6..10) and resumed in calls of 3 (8..10, 11).
  config = make_config(**{'dataset.augment': 'cifar,cutout', 'num_epochs': 0.5,
                          'steps_per_call': 5})
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))
  assert straight['step'] == 11 and straight['examples'] == 360
  workdir = str(tmp_path / 'restarted')
  halted = train.train_and_evaluate(config, workdir, stop_at_step=7)
  assert halted == {'step': 7, 'preempted': True}
  # No data iterator is saved: the order is a function of (seed, step).
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints', '7'))) == [
      '_CHECKPOINT_METADATA', 'commit_success.txt', 'state']
  # The host pipeline cannot resume from it: a clear error, not a fallback to older ones.
  host_batches = iter(make_train_loader(load_split(config.dataset, 'train'), global_batch_size=64,
                                        seed=0, augment='none', image_size=32, num_workers=0))
  checkpointer = checkpoint.Checkpointer(workdir, keep=3, fallback=True)
  with pytest.raises(ValueError, match='holds no data iterator.*config.dataset.on_device'):
    checkpointer.restore(checkpoint.load_state_tree(workdir), host_batches)
  checkpointer.close()
  config.steps_per_call = 3
  resumed = train.train_and_evaluate(config, workdir, allow_config_change=('steps_per_call',))
  assert resumed == straight
  a, b = checkpoint.load_state_tree(str(tmp_path / 'straight')), checkpoint.load_state_tree(workdir)
  assert int(a['step']) == int(b['step']) == 11
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_loss_goes_down_on_real_mnist(mnist_folder, tmp_path):
  config = make_config(**{'dataset.source': f'folder:{mnist_folder}', 'dataset.val_fraction': 0.1,
                          'dataset.eval_split': 'validation', 'dataset.mean': (33.3,),
                          'dataset.std': (78.6,), 'dataset.on_device': 'always',
                          'num_epochs': 3.0, 'log_every_steps': 28,
                          'checkpoint_every_steps': 1000})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['examples'] == 200 and results['step'] == 3 * (1800 // 64)
  assert results['accuracy'] > 0.75  # Chance is 0.10.
  assert results['loss'] < 0.5 * np.log(10)  # Untrained: about ln 10.
