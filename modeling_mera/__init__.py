"""
The MERA model: everything that travels to the Hub with `trust_remote_code`.

This folder imports only torch, transformers and itself (single-level relative imports), because
`save_pretrained` copies its files flat next to the weights.
"""

from .configuration_mera import MeraConfig, MeraModalityConfig, PointBertConfig
from .connectors import MeraMLPConnector, MeraQFormerConnector
from .encoders import PointBertModel, load_pretrained_encoder
from .modeling_mera import MeraForCausalLM, MeraModel, MeraPreTrainedModel
from .processing_mera import MeraBatch, MeraProcessor

# `save_pretrained` copies the code files next to the weights only for registered classes; the other auto classes
# are listed in the config's default `auto_map`.
MeraConfig.register_for_auto_class("AutoConfig")
MeraForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "MeraBatch",
    "MeraConfig",
    "MeraForCausalLM",
    "MeraMLPConnector",
    "MeraModalityConfig",
    "MeraModel",
    "MeraPreTrainedModel",
    "MeraProcessor",
    "MeraQFormerConnector",
    "PointBertConfig",
    "PointBertModel",
    "load_pretrained_encoder",
]
