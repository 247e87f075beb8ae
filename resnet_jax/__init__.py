"""resnet_jax: the classic image-classification CNNs and their training techniques in JAX/Flax.

Importing the package has no side effects; the entry points set XLA's CPU defaults
(`resnet_jax.xla_flags`).
"""
