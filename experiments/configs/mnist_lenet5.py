"""LeNet-5 (LeCun et al. 1998) on MNIST, with a modern recipe: not the paper's training.

LeCun et al. 1998 (Sec. II.B, III.C, Appendix A-C) train 20 passes with stochastic diagonal
Levenberg-Marquardt and a fixed step schedule, a scaled tanh, trainable subsampling, Euclidean RBF
outputs and an MAP-style loss, reaching 0.95% test error (0.8% with distortions). This file keeps
the network's layout (the registered `lenet5`; `--config.model.sparse_c3=true` gives Table I's C3)
and trains it as one would today: SGD with momentum, cosine schedule, weight decay, cross-entropy.
`experiments/reproduce.py --table=lecun1998` trains it beside the paper's number.

Default source `tfds:mnist` (prepare once: `tfds build mnist --file_format=array_record`).
Any other source by override, e.g. the PNG folder of ../shared/data:
  --config.dataset.source=folder:/data/mnist --config.dataset.eval_split=validation
(a folder with only train/ gets a validation split carved by config.dataset.val_fraction).
"""
from resnet_jax.config import base_config


def get_config():
  config = base_config()
  config.model.name = 'lenet5'
  config.dataset.source = 'tfds:mnist'
  config.dataset.eval_split = 'test'
  config.dataset.val_fraction = 0.1
  config.dataset.image_size = 32  # LeCun et al. 1998, Sec. II.B: 28x28 digits in a 32x32 field.
  config.dataset.augment = 'none'
  config.dataset.mean = (33.3,)  # MNIST pixel mean and std (0.1307, 0.3081) on the 0..255 scale.
  config.dataset.std = (78.6,)
  config.num_epochs = 10
  config.batch_size = 128
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = 'cosine'
  config.schedule.base_lr = 0.05
  config.checkpoint_every_steps = 1000
  config.log_every_steps = 100
  return config
