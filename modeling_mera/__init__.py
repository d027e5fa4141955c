"""
The MERA model: everything that travels to the Hub with `trust_remote_code`.

This folder imports only torch, transformers and itself (single-level relative imports), because
`save_pretrained` copies its files flat next to the weights.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from .beats import BeatsConfig, BeatsModel
from .configuration_mera import MeraConfig, MeraModalityConfig, PointBertConfig
from .connectors import MeraMLPConnector, MeraQFormerConnector
from .encoders import PointBertModel, load_pretrained_encoder
from .modeling_mera import MeraForCausalLM, MeraModel, MeraPreTrainedModel
from .processing_mera import MeraBatch, MeraProcessor

# `save_pretrained` copies the code files next to the weights (and the processor's next to its files) only for
# classes registered for an auto class; the other auto classes are listed in the config's default `auto_map`.
MeraConfig.register_for_auto_class("AutoConfig")
MeraForCausalLM.register_for_auto_class("AutoModelForCausalLM")
MeraProcessor.register_for_auto_class("AutoProcessor")

# With the package imported, the Auto classes know MERA: a stage loads with this code, without trust_remote_code.
AutoConfig.register(MeraConfig.model_type, MeraConfig, exist_ok=True)
for auto_class in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
    auto_class.register(MeraConfig, MeraForCausalLM, exist_ok=True)
AutoProcessor.register(MeraConfig, MeraProcessor, exist_ok=True)

__all__ = [
    "BeatsConfig",
    "BeatsModel",
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
