"""Ciresan, Meier, Gambardella & Schmidhuber 2010, "Deep, Big, Simple Neural Nets for Handwritten
Digit Recognition" (Neural Computation 22(12)): plain MLPs, on-line back-propagation, and digits
deformed anew every epoch. Their biggest net (Table 1, ID 4: 2500-2000-1500-1000-500-10) reached
0.35% MNIST test error after 800 epochs.

The paper's recipe, and what is ours:
- model: `ciresan_mlp4` (`--config.model.name=ciresan_mlp1` .. `ciresan_mlp5` for Table 1's others):
  scaled tanh 1.7159 tanh(0.6666 x), weights and biases U(-0.05, 0.05) (Sec. 3); 29x29 inputs
  (Table 1's weight counts fit 841 inputs), so the 28x28 digits are resized to 29x29. Ours has a
  softmax cross-entropy output where the paper has scaled tanh output units.
- data: every epoch's images deformed on-line (Sec. 2): 'ciresan' = affine (rotation +-15 degrees,
  scaling 15% per axis) then elastic (Simard et al. 2003: sigma 5-6, alpha 36-38), one resampling.
  Pixels to [-1, 1]: value / 127.5 - 1 (Sec. 2), our 'fixed' mean = std = 127.5.
- learning rate: 1e-3 decayed per epoch to 1e-6 at epoch 800 (Sec. 3), i.e. times 10^(-3/800) =
  0.99140 per epoch; plain SGD, no momentum, no weight decay.
- batch: the paper updates after every image (batch 1). That is 60,000 steps an epoch, far too
  slow on a CPU; we take batch 32 with the learning rate times 32 (the gradient summed over the
  batch, each image's step as large as on-line BP's), a standard linear-scaling substitute.
- splits: the paper validates on the undeformed training set and tests on MNIST's test set
  (`tfds:mnist`, prepared once: `tfds build mnist --file_format=array_record`). The PNG folder
  (../shared/data/mnist-train-png.tar.gz, extracted as train/<class>/<file>) has only the
  training set: add
    --config.dataset.source=folder:/data/mnist --config.dataset.eval_split=validation
    --config.dataset.val_fraction=0.1
  to carve 10% off as 'validation', reported as the held-out error.

Run: python -m resnet_jax.main --config=experiments/configs/mnist_ciresan2010.py --workdir=DIR
  [--config.num_epochs=N]
"""
from resnet_jax.config import base_config

EPOCHS = 800  # Ciresan et al. 2010, Table 1: 800 epochs for the 0.35% net.
BATCH = 32  # Ours (CPU); the paper's is 1: on-line BP.


def get_config():
  config = base_config()
  config.model.name = 'ciresan_mlp4'  # Table 1, ID 4: the 0.35% net, 12.11M weights.
  config.dataset.source = 'tfds:mnist'
  config.dataset.eval_split = 'test'  # Table 1: MNIST test error.
  config.dataset.image_size = 29  # Table 1's weight counts: 29 x 29 = 841 inputs.
  config.dataset.augment = 'ciresan'  # Sec. 2: affine, then elastic, new every epoch.
  config.dataset.mean = (127.5,)  # Sec. 2: pixel / 127.5 - 1, in [-1, 1].
  config.dataset.std = (127.5,)
  config.num_epochs = EPOCHS
  config.batch_size = BATCH
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.0  # Plain on-line back-propagation (Sec. 3).
  config.optimizer.weight_decay = 0.0
  config.schedule.name = 'exponential'
  config.schedule.base_lr = 1e-3 * BATCH  # Sec. 3: 1e-3 per image; the batch's gradient summed.
  config.schedule.decay_factor = 10 ** (-3 / EPOCHS)  # Sec. 3: 1e-3 to 1e-6 over the run.
  config.eval_every_epochs = 1.0
  config.checkpoint_every_steps = 2000
  config.log_every_steps = 200
  return config
