"""edgeres model zoo: timm-style ResNets in Keras 3 (see :mod:`edgeres.zoo.resnet`).

Importing this package imports Keras; the models themselves are registered
on first use of the registry functions.
"""

from edgeres.zoo.registry import (
    ModelEntry,
    count_params,
    create_model,
    is_model_name,
    list_models,
    load_weights_from_keras_applications,
    model_entry,
    register_model,
)

__all__ = [
    "ModelEntry",
    "count_params",
    "create_model",
    "is_model_name",
    "list_models",
    "load_weights_from_keras_applications",
    "model_entry",
    "register_model",
]
