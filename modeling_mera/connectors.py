"""Connectors: the small trainable modules that map an encoder's features into the LLM's embedding space."""

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel


class MeraMLPConnector(nn.Module):
    """
    `depth` linear layers with an activation between them. Depth 2 with gelu is LLaVA's `mlp2x_gelu` projector
    (`layers.0` / `layers.1` hold what LLaVA calls `linear_1` / `linear_2`); depth 1 is the linear connector.
    """

    def __init__(self, input_size: int, output_size: int, depth: int = 2, activation: str = "gelu", bias: bool = True):
        super().__init__()
        if depth < 1:
            raise ValueError(f"mlp connector depth must be >= 1, got {depth}")
        self.layers = nn.ModuleList(
            [nn.Linear(input_size if i == 0 else output_size, output_size, bias=bias) for i in range(depth)]
        )
        self.act = ACT2FN[activation]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden_states = self.layers[0](features)
        for layer in self.layers[1:]:
            hidden_states = layer(self.act(hidden_states))
        return hidden_states


class MeraQFormerConnector(nn.Module):
    """
    A BLIP-2 style Q-Former: `num_query_tokens` learnt queries cross-attend to the encoder's features, then a linear
    layer maps them to the LLM's hidden size. Whatever the input length, it yields `num_query_tokens` tokens.
    """

    def __init__(
        self, input_size: int, output_size: int, num_query_tokens: int = 32, qformer_config: dict | None = None
    ):
        super().__init__()
        qformer_kwargs = {key: value for key, value in (qformer_config or {}).items() if key != "model_type"}
        qformer_kwargs["encoder_hidden_size"] = input_size
        config = Blip2QFormerConfig(**qformer_kwargs)
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, config.hidden_size))
        nn.init.normal_(self.query_tokens, std=config.initializer_range)
        self.qformer = Blip2QFormerModel(config)
        self.projection = nn.Linear(config.hidden_size, output_size)

    def forward(self, features: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        query_embeds = self.query_tokens.expand(features.shape[0], -1, -1)
        outputs = self.qformer(
            query_embeds=query_embeds,
            encoder_hidden_states=features,
            encoder_attention_mask=attention_mask,
            return_dict=True,
        )
        return self.projection(outputs.last_hidden_state)


def build_connector(connector: dict, input_size: int, output_size: int) -> nn.Module:
    """The connector described by a modality's `connector` dict (see `MeraModalityConfig.connector`)."""
    options = {key: value for key, value in connector.items() if key != "type"}
    kind = connector["type"]
    try:
        if kind == "mlp":
            return MeraMLPConnector(input_size, output_size, **options)
        if kind == "linear":
            return MeraMLPConnector(input_size, output_size, depth=1, **options)
        if kind == "qformer":
            return MeraQFormerConnector(input_size, output_size, **options)
    except TypeError as error:
        raise ValueError(f"connector {connector!r}: invalid options ({error})") from error
    raise ValueError(f"unknown connector type {kind!r}; expected 'mlp', 'linear' or 'qformer'")
