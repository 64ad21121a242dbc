"""The PyTorch binding in one import (extra ``dcframe[torch]``): compress and load modules, calibrate, retrain.

    from dcframe.torch import calibrate, compress_module, load_module
"""

from __future__ import annotations

from dcframe.bindings.torchcalib import calibrate
from dcframe.bindings.torchio import compress_module, layer_rules, load_module, load_state_dict
from dcframe.bindings.torchretrain import TorchRetrainer

__all__ = ["TorchRetrainer", "calibrate", "compress_module", "layer_rules", "load_module", "load_state_dict"]
