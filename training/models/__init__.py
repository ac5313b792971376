"""The model zoo: segmentation networks by name, each with declared distillation taps.

Importing this package registers every family. Typical use::

    from edgeseg.training.models import create_model, list_models, taps_of
    model = create_model("deeplabv3_resnet18", num_classes=11)
    taps = taps_of(model)            # {"stage1": Tap(module="backbone.layer1", ...), ..., "logits": ...}
"""

from . import bisenetv2, deeplabv3, fastscnn, lraspp, pspnet, tiny  # noqa: F401  (imported to register)
from ._registry import Tap, create_model, list_models, model_info, register_model, taps_of
from .profile import count_flops, count_params, count_traffic
from .weights import load_backbone_weights, read_state_dict

__all__ = ["Tap", "count_flops", "count_params", "count_traffic", "create_model", "list_models",
           "load_backbone_weights", "model_info", "read_state_dict", "register_model", "taps_of"]
