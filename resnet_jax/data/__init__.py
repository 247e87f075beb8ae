"""Datasets (digits, TFDS, image folders), augmentation, preprocessing and the Grain pipeline.

The public names other modules use; nothing outside this package imports a private helper.
"""
from resnet_jax.data import augment, preprocess
from resnet_jax.data.checks import check_dataset_config
from resnet_jax.data.pipeline import eval_batches, make_train_loader, records_of_this_process
from resnet_jax.data.preprocess import Preprocessing
from resnet_jax.data.sources import Split, load_split, to_iter_dataset

__all__ = ['Preprocessing', 'Split', 'augment', 'check_dataset_config', 'eval_batches',
           'load_split', 'make_train_loader', 'preprocess', 'records_of_this_process',
           'to_iter_dataset']
