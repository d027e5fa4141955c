"""MERA model configuration: one causal LLM plus any number of modalities, each with its encoder and connector."""

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from transformers import AutoConfig, PreTrainedConfig

from .beats import BeatsConfig

MODALITY_KINDS = ("image", "video", "audio", "point_cloud")
# Every auto class resolves to the full model: `AutoModel.from_pretrained(repo)` must give logits and `generate`.
DEFAULT_AUTO_MAP = {
    "AutoConfig": "configuration_mera.MeraConfig",
    "AutoModel": "modeling_mera.MeraForCausalLM",
    "AutoModelForCausalLM": "modeling_mera.MeraForCausalLM",
    "AutoModelForImageTextToText": "modeling_mera.MeraForCausalLM",
}
CONNECTOR_TYPES = ("mlp", "linear", "qformer")


class PointBertConfig(PreTrainedConfig):
    r"""
    Configuration of the Point-BERT point-cloud encoder built into mera-mcl (transformers has none).

    A cloud of `num_points` points (xyz, optionally followed by `point_channels - 3` extra channels such as rgb, as
    PointLLM's Point-BERT v1.2 reads them) is cut into `num_groups` local patches: centres by farthest point sampling,
    `group_size` nearest neighbours each. A mini-PointNet embeds each patch into an `encoder_dims` vector, projected
    to `hidden_size`; a CLS token is prepended and a transformer mixes the tokens, so the encoder yields
    `num_groups + 1` tokens. The defaults are Point-BERT's (`trans_dim` 384, `depth` 12, `num_heads` 6,
    `encoder_dims` 256, no qkv bias, LayerNorm eps 1e-5) with v1.2's 512 groups of 32 points.
    """

    model_type = "mera_point_bert"

    def __init__(
        self,
        point_channels: int = 3,
        num_groups: int = 512,
        group_size: int = 32,
        encoder_dims: int = 256,
        hidden_size: int = 384,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 6,
        intermediate_size: int = 1536,
        hidden_act: str = "gelu",
        qkv_bias: bool = False,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.point_channels = point_channels
        self.num_groups = num_groups
        self.group_size = group_size
        self.encoder_dims = encoder_dims
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.qkv_bias = qkv_bias
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        super().__init__(**kwargs)


def encoder_config_from_dict(config: dict | PreTrainedConfig, where: str) -> PreTrainedConfig:
    """Rebuild an encoder config from its `to_dict()` form: any transformers config, or Point-BERT's or BEATs'."""
    if isinstance(config, PreTrainedConfig):
        return config
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"{where}: expected a transformers config or a dict with a 'model_type', got {config!r}")
    config = dict(config)
    model_type = config.pop("model_type")
    built_in = {config_class.model_type: config_class for config_class in (PointBertConfig, BeatsConfig)}
    if model_type in built_in:
        return built_in[model_type](**config)
    try:
        return AutoConfig.for_model(model_type, **config)
    except ValueError as error:
        raise ValueError(f"{where}: unknown encoder model_type {model_type!r}") from error


@dataclass
class MeraModalityConfig:
    """
    Everything the model and the processor need to know about one modality.

    Stored in `MeraConfig.modalities[name]` as a plain dict, so that `config.json` stays readable and the set of
    modalities can grow stage after stage.
    """

    kind: str
    """How inputs are encoded: 'image', 'video' (image encoder per frame + pooling), 'audio' or 'point_cloud'."""
    encoder_config: dict
    """The encoder's config as `PreTrainedConfig.to_dict()` (any HF vision/audio encoder, `PointBertConfig` or
    `BeatsConfig`)."""
    connector: dict = field(default_factory=lambda: {"type": "mlp", "depth": 2, "activation": "gelu"})
    """'mlp' (`depth`, `activation`; depth 2 + gelu is LLaVA's mlp2x_gelu), 'linear', or 'qformer'
    (`num_query_tokens`, `qformer_config`: a BERT-like dict of `Blip2QFormerConfig` fields, `init_from`: a BERT
    checkpoint, Hub id or folder, that `add_modality` starts the Q-Former from, as BLIP-2 does)."""
    placeholder: str = ""
    """Placeholder string in prompts, e.g. '<audio>'. Defaults to '<name>'."""
    placeholder_token_id: int = -1
    """Id the processor writes for each feature token. It lies outside the LLM's vocabulary: the model swaps it for
    the pad id before the embedding lookup, so no embedding row is added and the LLM stays modality-agnostic."""
    num_tokens: int | None = None
    """Feature tokens one item yields (after encoder, pooling and connector). Measured by a dry run when None."""
    feature_layer: int = -1
    """Encoder hidden-state layer the features come from (LLaVA uses -2 for CLIP)."""
    feature_select_strategy: str = "full"
    """'default' drops the encoder's first (CLS) token, as LLaVA does; 'full' keeps every token."""
    num_frames: int = 4
    """Video: frames sampled uniformly per clip."""
    frame_pooling: int = 2
    """Video: each frame's token grid is downsampled by this factor with bilinear pooling (1 = none)."""
    sampling_rate: int = 16000
    """Audio: rate (Hz) the encoder's feature extractor expects; the processor resamples to it."""
    max_audio_seconds: float = 10.0
    """Audio: clips are padded or cut to this length, so that every clip yields the same number of tokens."""
    num_points: int = 8192
    """Point cloud: points sampled per cloud."""
    description: str = ""
    """Free text naming the modality's data, used in model cards and by routers."""

    def __post_init__(self):
        if self.kind not in MODALITY_KINDS:
            raise ValueError(f"modality kind must be one of {MODALITY_KINDS}, got {self.kind!r}")
        connector_type = self.connector.get("type")
        if connector_type not in CONNECTOR_TYPES:
            raise ValueError(f"connector 'type' must be one of {CONNECTOR_TYPES}, got {connector_type!r}")
        if self.feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"feature_select_strategy must be 'default' or 'full', got {self.feature_select_strategy!r}"
            )
        if self.frame_pooling < 1 or self.num_frames < 1:
            raise ValueError(
                f"num_frames and frame_pooling must be >= 1, got {self.num_frames} and {self.frame_pooling}"
            )

    @property
    def encoder(self) -> PreTrainedConfig:
        encoder = encoder_config_from_dict(self.encoder_config, where=f"{self.kind} encoder_config")
        if self.kind in ("image", "video") and getattr(encoder, "vision_config", None) is not None:
            # A full CLIP/SigLIP config: its vision tower is what encodes images.
            encoder = encoder.vision_config
        return encoder

    @property
    def encoder_hidden_size(self) -> int:
        encoder = self.encoder
        size = getattr(encoder, "hidden_size", None) or getattr(encoder, "d_model", None)
        if size is None:
            raise ValueError(f"cannot tell the hidden size of encoder config {type(encoder).__name__}")
        return int(size)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))


class MeraConfig(PreTrainedConfig):
    r"""
    Configuration of a [`MeraForCausalLM`]: a causal language model plus an ordered set of modalities.

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of any causal LM loadable with `AutoModel` (Llama, Qwen2, Mistral, ...). Defaults to Llama.
        modalities (`dict[str, dict | MeraModalityConfig]` or `list[dict]`, *optional*):
            Modality name -> [`MeraModalityConfig`] (or its dict form), in the order the modalities were learnt.
            `config.json` stores them as a list of dicts with a "name" key, since JSON objects lose their order.
        freeze_encoders (`bool`, *optional*, defaults to `True`):
            Encoders are pre-trained and kept frozen, as in the paper.

    Example:

    ```python
    >>> from transformers import CLIPVisionConfig, LlamaConfig
    >>> from modeling_mera import MeraConfig, MeraForCausalLM
    >>> config = MeraConfig(text_config=LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    ...                     intermediate_size=128, vocab_size=100))
    >>> model = MeraForCausalLM(config)
    >>> model.add_modality("image", kind="image", encoder_config=CLIPVisionConfig(hidden_size=32,
    ...                    intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
    ...                    patch_size=8))
    ```
    """

    model_type = "mera"
    sub_configs = {"text_config": AutoConfig}

    def __init__(
        self,
        text_config: dict | PreTrainedConfig | None = None,
        modalities: dict[str, dict | MeraModalityConfig] | list[dict] | None = None,
        freeze_encoders: bool = True,
        tie_word_embeddings: bool | None = None,
        **kwargs,
    ):
        if text_config is None:
            text_config = AutoConfig.for_model("llama")
        elif isinstance(text_config, dict):
            text_config = dict(text_config)
            model_type = text_config.pop("model_type", "llama")
            text_config = AutoConfig.for_model(model_type, **text_config)
        self.text_config = text_config
        if isinstance(modalities, list):
            modalities = {entry["name"]: {k: v for k, v in entry.items() if k != "name"} for entry in modalities}
        self.modalities = {}
        for name, modality in (modalities or {}).items():
            self.modalities[name] = self._validated_modality(name, modality).to_dict()
        self.freeze_encoders = freeze_encoders
        if tie_word_embeddings is None:
            tie_word_embeddings = bool(getattr(text_config, "tie_word_embeddings", False))
        kwargs["auto_map"] = {**DEFAULT_AUTO_MAP, **(kwargs.get("auto_map") or {})}
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["modalities"] = [{"name": name, **modality} for name, modality in self.modalities.items()]
        return output

    def _validated_modality(self, name: str, modality: dict | MeraModalityConfig) -> MeraModalityConfig:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                f"modality names must be Python identifiers (they become keyword arguments), got {name!r}"
            )
        if isinstance(modality, dict):
            known = {f.name for f in fields(MeraModalityConfig)}
            unknown = sorted(set(modality) - known)
            if unknown:
                raise ValueError(f"modality {name!r}: unknown fields {unknown}; known fields are {sorted(known)}")
            modality = MeraModalityConfig(**modality)
        # Store the JSON form (string label keys, dtype names) so that a saved and reloaded config compares equal.
        encoder_config = encoder_config_from_dict(modality.encoder_config, where=f"modality {name!r} encoder_config")
        modality.encoder_config = json.loads(encoder_config.to_json_string(use_diff=False))
        if not modality.placeholder:
            modality.placeholder = f"<{name}>"
        taken = {m["placeholder_token_id"]: other for other, m in self.modalities.items()}
        if modality.placeholder_token_id < 0:
            modality.placeholder_token_id = max([self.text_config.vocab_size - 1, *taken]) + 1
        if modality.placeholder_token_id < self.text_config.vocab_size:
            raise ValueError(
                f"modality {name!r}: placeholder_token_id {modality.placeholder_token_id} lies inside the LLM's "
                f"vocabulary (size {self.text_config.vocab_size}); it must be >= the vocabulary size"
            )
        if modality.placeholder_token_id in taken:
            raise ValueError(
                f"modality {name!r}: placeholder_token_id {modality.placeholder_token_id} is already used by "
                f"modality {taken[modality.placeholder_token_id]!r}"
            )
        return modality

    def add_modality(self, name: str, modality: dict | MeraModalityConfig) -> MeraModalityConfig:
        """Record a new modality (after the existing ones) and return its validated config."""
        if name in self.modalities:
            raise ValueError(f"modality {name!r} already exists; modalities so far: {list(self.modalities)}")
        modality = self._validated_modality(name, modality)
        self.modalities[name] = modality.to_dict()
        return modality

    def modality(self, name: str) -> MeraModalityConfig:
        """The typed config of modality `name`."""
        if name not in self.modalities:
            raise ValueError(f"unknown modality {name!r}; this model knows {list(self.modalities)}")
        return MeraModalityConfig(**self.modalities[name])

    def move_placeholders_above_vocabulary(self):
        """
        After the LLM's vocabulary grew (`resize_token_embeddings`), give every placeholder id that now lies inside it
        a new id above it, keeping the modalities' order, so that placeholders never alias real tokens.
        """
        vocab_size = self.text_config.vocab_size
        if all(modality["placeholder_token_id"] >= vocab_size for modality in self.modalities.values()):
            return
        by_id = sorted(self.modalities.values(), key=lambda modality: modality["placeholder_token_id"])
        for offset, modality in enumerate(by_id):
            modality["placeholder_token_id"] = vocab_size + offset

    @property
    def placeholder_token_ids(self) -> dict[str, int]:
        return {name: modality["placeholder_token_id"] for name, modality in self.modalities.items()}


__all__ = ["BeatsConfig", "MeraConfig", "MeraModalityConfig", "PointBertConfig"]
