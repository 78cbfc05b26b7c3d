"""edgeres model zoo: timm-style ResNets in Keras 3 (see :mod:`edgeres.zoo.resnet`).

Importing this package imports Keras and registers the built-in models:
:mod:`edgeres.zoo.registry` is a plain table that imports no architecture,
and this ``__init__`` imports :mod:`edgeres.zoo.resnet`, whose decorators fill
it.  Python runs this file before any submodule, so importing
``edgeres.zoo.registry`` directly also finds the built-in models.
"""

from edgeres.zoo import resnet  # noqa: F401  (registers the built-in models in the registry)
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
