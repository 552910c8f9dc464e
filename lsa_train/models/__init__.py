"""Models: plain ``nn.Module``s taking inputs in ``[0, 1]`` (normalization inside) and returning logits.

Use :func:`create_model` with a name from :func:`list_models` or ``"tv:<torchvision name>"``;
:func:`~lsa_train.models.timm_models.create_timm_model` and
:func:`~lsa_train.models.robustbench_models.load_robustbench_model` reach timm and RobustBench (optional
packages); :func:`load_weights` loads a weights file of any common layout without running code from it.
Importing this package registers every model.
"""

from lsa_train.models import cnn, mlp, preact_resnet, resnet, vgg, wide_resnet  # noqa: F401 (registers)
from lsa_train.models.normalization import Normalize, NormalizedModel
from lsa_train.models.registry import TV_PREFIX, create_model, list_models, register_model
from lsa_train.models.weights import LoadReport, UntrustedFileError, load_weights, read_weights_file

__all__ = [
    "TV_PREFIX", "LoadReport", "Normalize", "NormalizedModel", "UntrustedFileError", "create_model", "list_models",
    "load_weights", "read_weights_file", "register_model",
]
