"""Seed ensembles on the CIFAR-10 JPEG folder: k members trained together in one vmapped program
(resnet_jax.sweep.train_seed_ensemble), each scored alone and as a softmax average, on the
center view and on the 10-crop (pad 4, as training's crops).

full: ResNet-20 with He et al. 2015's CIFAR schedule (cifar10_resnet20.py: batch 128, lr 0.1 /10 at
32k and 48k iterations, 64k in all) on the paper's 45k/5k train/validation split, 5 members.
cpu (about 5 minutes on 2 cores): LeNet-5 with ReLU (62k parameters) on the first 1,000 images
of each class (8,000 train / 2,000 validation), 3 members, 4 epochs. No ResNet fits there: XLA:CPU
runs the vmapped convolutions (grouped convolutions) about 4x slower than plain ones, and ResNet-20
trains at a few images per second per member.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cifar10_resnet20  # noqa: E402

BUDGETS = ('cpu', 'full')
MEMBERS = {'cpu': 3, 'full': 5}
IMAGES_PER_CLASS = {'cpu': 1000, 'full': None}  # None: all 5,000 of each class.


def get_config(budget: str = 'cpu'):
  if budget not in BUDGETS:
    raise ValueError(f'--budget {budget!r} is not one of {BUDGETS}')
  config = cifar10_resnet20.get_config()
  config.dataset.eval_split = 'validation'
  config.dataset.val_fraction = 0.1  # He et al. 2015, Sec. 4.2: 45k/5k train/validation.
  config.checkpoint_every_steps = 5000
  if budget == 'cpu':
    config.dataset.num_workers = 0  # 2 cores: the members' streams are read here, in turn.
    config.model.name = 'lenet5'
    config.model.act = 'relu'
    config.model.zero_init_residual = None  # LeNet-5 has no residual units.
    # No BatchNorm: inputs standardised per channel (CIFAR-10's pixel mean and std), and no
    # decay on the biases (He 2015's per-pixel mean at std 1 suits nets with BN after conv1).
    config.dataset.preprocess = 'fixed'
    config.dataset.mean = (125.3, 123.0, 113.9)
    config.dataset.std = (63.0, 62.1, 66.7)
    config.optimizer.decay_norm_and_bias = False
    config.num_epochs = 4
    config.dataset.val_fraction = 0.2  # 2,000 held out: a standard error of ~1% on accuracy.
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = 'cosine'
    config.schedule.base_lr = 0.05
    config.log_every_steps = 35
  return config
