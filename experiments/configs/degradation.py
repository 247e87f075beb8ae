"""The degradation experiment (He et al. 2015, Fig. 1 and 6): plain vs residual nets on CIFAR-10.

full: the paper's Sec. 4.2 recipe on a 45k/5k train/validation split of the CIFAR folder: batch 128,
  SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 32k and 48k iterations, stop at 64k,
  pad-4 crops and flips, 32x32.
cpu: what two CPU cores do in about half an hour for all four nets: the same recipe at the paper's
  first learning rate (0.1, constant) for 2 epochs, on the images resized to 16x16 (a quarter of the
  operations; pad 2, the paper's 4 at half the size), in bfloat16.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cifar10_resnet20  # noqa: E402

MODELS = ('plain20', 'plain56', 'cifar_resnet20', 'cifar_resnet56')
TRAIN_EXAMPLES = 45_000  # 50k CIFAR training images less the 5k validation split (Sec. 4.2).


def get_config(budget: str = 'cpu'):
  config = cifar10_resnet20.get_config()
  config.dataset.eval_split = 'validation'
  config.dataset.val_fraction = 0.1
  steps_per_epoch = TRAIN_EXAMPLES // config.batch_size
  if budget == 'full':
    iterations = lambda n: n / steps_per_epoch  # noqa: E731  (iterations -> epochs)
    config.num_epochs = iterations(64_000)
    config.schedule.boundaries = (iterations(32_000), iterations(48_000))
    config.eval_every_epochs = 2.0
  else:
    config.num_epochs = 2.0
    config.schedule.name = 'constant'
    config.dataset.image_size = 16
    config.dataset.pad = 2
    config.dtype = 'bfloat16'
    config.eval_every_epochs = 0.25
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  return config
