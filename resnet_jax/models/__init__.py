"""The model zoo: `create_model`, `list_models`, `model_spec`, `count_params`, and a model's
`initial_variables` / `abstract_variables` (shapes only) and `forward_flops` (XLA's count).

Importing a family module registers its variants.
"""
# Imported for their register(...) calls.
from resnet_jax.models import (  # noqa: F401
    alexnet,
    bn_inception,
    enet,
    fmp,
    fractalnet,
    googlenet,
    inception,
    inception_v4,
    lenet,
    mlp,
    mobilenet,
    nin,
    overfeat,
    resnet,
    squeezenet,
    vgg,
    xception,
)
from resnet_jax.models.registry import (
    FeatureExtractor,
    abstract_variables,
    count_params,
    create_model,
    feature_info,
    forward_flops,
    initial_variables,
    list_models,
    model_spec,
)

__all__ = ['FeatureExtractor', 'abstract_variables', 'count_params', 'create_model',
           'feature_info', 'forward_flops', 'initial_variables', 'list_models', 'model_spec']
