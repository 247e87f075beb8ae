"""Datasets (digits, TFDS, image folders), augmentation and the Grain pipeline."""
from resnet_jax.data.pipeline import eval_batches, make_train_loader, to_global
from resnet_jax.data.sources import Split, load_split

__all__ = ['Split', 'eval_batches', 'load_split', 'make_train_loader', 'to_global']
