"""Connectors: the small trainable modules that map an encoder's features into the LLM's embedding space."""

import re

import torch
from torch import nn
from transformers import BertModel
from transformers.activations import ACT2FN
from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel

from .key_mapping import rename_key


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


# BertModel's names -> Blip2QFormerModel's ({i}: a layer index). BLIP-2 starts its Q-Former from BERT this way:
# the query stream's feed-forward (`intermediate_query`, `output_query`) copies BERT's feed-forward.
BERT_TO_QFORMER = [
    ("embeddings.LayerNorm.", "layernorm."),
    ("encoder.layer.{i}.attention.self.", "encoder.layer.{i}.attention.attention."),
    ("encoder.layer.{i}.attention.output.", "encoder.layer.{i}.attention.output."),
    ("encoder.layer.{i}.intermediate.", "encoder.layer.{i}.intermediate_query."),
    ("encoder.layer.{i}.output.", "encoder.layer.{i}.output_query."),
]
# BERT parts a query-only Q-Former has no use for: token embeddings, the pooler, pre-training heads.
BERT_UNUSED = re.compile(r"(embeddings\.(word|position|token_type)_embeddings\.|pooler\.|cls\.)")
# Settings the Q-Former must share with the BERT checkpoint whose weights it takes.
BERT_SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act")


class MeraQFormerConnector(nn.Module):
    """
    A BLIP-2 style Q-Former: `num_query_tokens` learnt queries cross-attend to the encoder's features, then a linear
    layer maps them to the LLM's hidden size. Whatever the input length, it yields `num_query_tokens` tokens.

    `init_from` (a Hub id such as "bert-base-uncased" or a local folder) names the BERT checkpoint that
    `load_bert_weights` starts the Q-Former from, as BLIP-2 does: self-attention, feed-forward and the embedding
    LayerNorm from BERT, cross-attention and query tokens new. The connector is built without it (a saved model
    carries its own weights); `MeraForCausalLM.add_modality` loads it when the modality is added.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        num_query_tokens: int = 32,
        qformer_config: dict | None = None,
        init_from: str | None = None,
    ):
        super().__init__()
        qformer_kwargs = {key: value for key, value in (qformer_config or {}).items() if key != "model_type"}
        qformer_kwargs["encoder_hidden_size"] = input_size
        config = Blip2QFormerConfig(**qformer_kwargs)
        self.init_from = init_from
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

    @torch.no_grad()
    def load_bert_weights(self, name_or_path: str | None = None, **from_pretrained_kwargs) -> list[str]:
        """
        Copy a BERT checkpoint's weights into the Q-Former as BLIP-2's `init_Qformer` does, and draw new query tokens
        (normal, std `initializer_range`). Returns the Q-Former's parameter names that stay newly initialised.

        The checkpoint must have every weight the Q-Former takes and nothing but BERT's (token embeddings, pooler and
        pre-training heads are known and left out); each missing or unexpected key is named in the error.
        """
        name_or_path = name_or_path or self.init_from
        if not name_or_path:
            raise ValueError("load_bert_weights needs a BERT checkpoint: pass one or set the connector's init_from")
        bert, loading_info = BertModel.from_pretrained(
            name_or_path, output_loading_info=True, **from_pretrained_kwargs
        )
        config = self.qformer.config
        differing = [
            f"{field}: {getattr(bert.config, field)!r} in {name_or_path}, {getattr(config, field)!r} in qformer_config"
            for field in BERT_SHAPE_FIELDS
            if getattr(bert.config, field) != getattr(config, field)
        ]
        if differing:
            raise ValueError(f"connector init_from {name_or_path}: shapes differ: {'; '.join(differing)}")
        qformer_state = self.qformer.state_dict()
        bert_state = {name: tensor for name, tensor in bert.state_dict().items() if not BERT_UNUSED.match(name)}
        missing = sorted(name for name in loading_info["missing_keys"] if not BERT_UNUSED.match(name))
        unexpected = sorted(name for name in loading_info["unexpected_keys"] if not BERT_UNUSED.match(name))
        unexpected += sorted(name for name in bert_state if rename_key(name, BERT_TO_QFORMER) not in qformer_state)
        if missing or unexpected:
            raise ValueError(
                f"connector init_from {name_or_path}: not a BERT checkpoint the Q-Former can start from; missing keys:"
                f" {missing or 'none'}; unexpected keys: {unexpected or 'none'}"
            )
        copied = {rename_key(name, BERT_TO_QFORMER): tensor for name, tensor in bert_state.items()}
        self.qformer.load_state_dict(copied, strict=False)
        nn.init.normal_(self.query_tokens, std=config.initializer_range)
        return sorted(set(qformer_state) - set(copied))


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
