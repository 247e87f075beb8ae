"""Datasets (digits, TFDS, image folders), augmentation, preprocessing and the Grain pipeline."""
from resnet_jax.data import augment, preprocess
from resnet_jax.data.pipeline import eval_batches, make_train_loader, to_global
from resnet_jax.data.preprocess import Preprocessing
from resnet_jax.data.sources import Split, load_split

__all__ = ['Preprocessing', 'Split', 'augment', 'eval_batches', 'load_split', 'make_train_loader',
           'preprocess', 'to_global']
