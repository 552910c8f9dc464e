"""Models: plain ``nn.Module``s taking inputs in ``[0, 1]`` (normalization inside) and returning logits.

Use :func:`create_model` with a name from :func:`list_models` or ``"tv:<torchvision name>"``.
Importing this package registers every model.
"""

from lsa_train.models import cnn, mlp, preact_resnet, resnet, vgg, wide_resnet  # noqa: F401 (registers)
from lsa_train.models.normalization import Normalize, NormalizedModel
from lsa_train.models.registry import TV_PREFIX, create_model, list_models, register_model

__all__ = ["TV_PREFIX", "Normalize", "NormalizedModel", "create_model", "list_models", "register_model"]
