"""The degradation experiment (He et al. 2015, Fig. 1 and 6): plain vs residual nets on CIFAR-10.

Both budgets train He et al. 2015's Sec. 4.2 recipe (cifar10_resnet20.py: batch 128, SGD momentum
0.9, weight decay 1e-4 on every weight, per-pixel mean, pad-and-crop + flips; the cpu miniature
adds two starts, below) on a 45k/5k train/validation split of the CIFAR folder, the split the
paper's Fig. 6 curves come from.

full: the paper's schedule: lr 0.1, divided by 10 at 32k and 48k iterations, stop at 64k, 32x32.
cpu: a miniature that keeps what the effect depends on and shrinks what it does not:
  - depth, width and the block structure are the paper's (20 and 56 layers, 16/32/64 filters,
    option A shortcuts): the degradation problem is a property of depth;
  - the schedule keeps its shape: lr 0.1, divided by 10 at 1/2 and at 3/4 of training (32k/64k and
    48k/64k), so the final errors are measured after the decays, as the paper's are, rather than at
    the noisy lr 0.1 plateau;
  - what shrinks is the image (16x16, pad 2: the paper's 4 at half the size; a quarter of the
    operations) and the length (CPU_EPOCHS epochs instead of 182: 1,404 iterations instead of
    64k), with the whole pipeline on device, so 2 seeds of all four nets fit in an hour on 2
    CPU cores;
  - two starts make up for the 45x fewer iterations, and both leave the plain nets' comparison
    as the paper's: a linear warm-up of half an epoch (He et al. 2015 warm ResNet-110 up at lr
    0.01 for 400 iterations, Sec. 4.2; here every net warms up alike), and each residual
    branch's last BN scale at zero (Goyal et al. 2017; plain nets have no residual branch, so
    it changes nothing for them), so that a residual net starts from the identity of its
    shortcuts, the reformulation Sec. 3.1 argues for. From BN's plain init the 56-layer residual
    net spends the first few hundred of the 1,404 iterations catching up (89% training error at
    iteration 50 against ResNet-20's 78%) and ends behind ResNet-20 (validation error 55.3% vs
    41.4%, mean of 2 seeds; 44.4% vs 41.0% with the warm-up alone, one seed): a miniature would
    then show slow starts, not depth. The paper's 64k iterations leave that start behind.
  `--budget=full` is the paper's, without either.
  What it shows is in docs/results.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cifar10_resnet20  # noqa: E402

MODELS = ('plain20', 'plain56', 'cifar_resnet20', 'cifar_resnet56')
TRAIN_EXAMPLES = 45_000  # 50k CIFAR training images less the 5k validation split (Sec. 4.2).
CPU_EPOCHS = 4.0
CPU_WARMUP_EPOCHS = 0.5


def get_config(budget: str = 'cpu'):
  config = cifar10_resnet20.get_config()
  config.dataset.eval_split = 'validation'
  config.dataset.val_fraction = 0.1
  config.dataset.fit_examples = TRAIN_EXAMPLES
  steps_per_epoch = TRAIN_EXAMPLES // config.batch_size
  if budget == 'full':
    iterations = lambda n: n / steps_per_epoch  # noqa: E731  (iterations -> epochs)
    config.num_epochs = iterations(64_000)
    config.schedule.boundaries = (iterations(32_000), iterations(48_000))
    config.eval_every_epochs = 2.0
  elif budget == 'cpu':
    config.num_epochs = CPU_EPOCHS
    config.schedule.boundaries = (CPU_EPOCHS / 2, CPU_EPOCHS * 3 / 4)
    config.dataset.image_size = 16
    config.dataset.pad = 2
    config.dataset.on_device = 'always'
    config.eval_every_epochs = CPU_EPOCHS / 6
    config.schedule.warmup_epochs = CPU_WARMUP_EPOCHS
    config.model.zero_init_residual = True  # Residual branches only (see the module's doc).
  else:
    raise ValueError(f"budget must be 'cpu' or 'full', got {budget!r}")
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  return config
