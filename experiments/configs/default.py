"""The embedded default (LeNet-5 on scikit-learn's digits), packaged in resnet_jax/configs/ so
an installed wheel has it; this file keeps the path the experiments and the README use."""
from resnet_jax.configs.default import get_config  # noqa: F401
