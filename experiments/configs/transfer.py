"""Transfer learning, MNIST -> CIFAR-10 (experiments/transfer.py): the pretraining run, the
fine-tuning run, and the settings compared.

- cpu: LeNet-5 with ReLU, the first 1,500 MNIST and 800 CIFAR-10 images of each class (13.5k /
  1.5k and 7.2k / 800 train / validation), 3 epochs of pretraining and 5 of each fine-tuning, no
  augmentation: about 6 minutes in all on 2 busy CPU cores.
- full: ResNet-20 (BatchNorm, so the frozen backbone keeps its MNIST statistics), every image
  (MNIST 54k / 6k, CIFAR-10 45k / 5k), 15 epochs of pretraining and 60 of each fine-tuning with
  CIFAR's pad-and-crop and flips: a GPU schedule.
The digits are turned to 3 channels (grey copied to R, G and B) so that the first layer takes
CIFAR's colour images; each dataset is normalised with its own per-channel mean and std.
"""
import ml_collections

from resnet_jax.config import base_config

# Name -> (starts from the pretrained backbone with a fresh head, config overrides).
SETTINGS = {
    'scratch': (False, {}),  # Random initialisation: the baseline.
    'frozen': (True, {'freeze': 'backbone'}),  # Only the new head trains (a linear probe).
    'finetune': (True, {}),  # Every layer trains at the same rate.
    'finetune_lr0.1': (True, {'optimizer.lr_multipliers': 'backbone=0.1'}),  # Backbone at lr/10.
}


def training_config(budget: str, epochs: float):
  """What the pretraining and the fine-tuning share: model, optimizer, schedule."""
  config = base_config()
  config.num_epochs = epochs
  config.batch_size = 128
  config.dataset.image_size = 32  # CIFAR's size; MNIST's 28x28 digits are resized to it.
  config.dataset.eval_split = 'validation'
  config.dataset.val_fraction = 0.1
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.schedule.name = 'cosine'
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  if budget == 'cpu':
    config.model.name = 'lenet5'
    config.model.act = 'relu'
    config.optimizer.weight_decay = 5e-4
    config.schedule.base_lr = 0.05  # The mnist_lenet5 recipe.
  else:
    config.model.name = 'cifar_resnet20'
    config.optimizer.weight_decay = 1e-4  # He et al. 2015, Sec. 4.2: wd 1e-4, lr 0.1, batch 128.
    config.schedule.base_lr = 0.1
    config.dataset.num_workers = 8
  return config


def get_config(budget: str = 'cpu'):
  if budget not in ('cpu', 'full'):
    raise ValueError(f"budget '{budget}' is not one of ('cpu', 'full')")
  c = ml_collections.ConfigDict()
  c.mnist_per_class = 1500 if budget == 'cpu' else 0  # Images per class; 0: all.
  c.cifar_per_class = 800 if budget == 'cpu' else 0
  c.pretrain = training_config(budget, 3.0 if budget == 'cpu' else 15.0)
  c.pretrain.dataset.mean = (33.3,)  # MNIST pixel mean and std (0.1307, 0.3081) on 0..255.
  c.pretrain.dataset.std = (78.6,)
  c.finetune = training_config(budget, 5.0 if budget == 'cpu' else 60.0)
  c.finetune.dataset.mean = (125.3, 123.0, 113.9)  # CIFAR-10 per-channel pixel mean and std.
  c.finetune.dataset.std = (63.0, 62.1, 66.7)
  c.finetune.dataset.augment = 'none' if budget == 'cpu' else 'cifar'
  return c
