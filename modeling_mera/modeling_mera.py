"""
MERA model: a causal LLM that reads any number of modalities, each through its own (frozen) encoder and trainable
connector, with features scattered into placeholder positions the way transformers' LLaVA does it.
"""

from dataclasses import fields

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, Cache, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils.generic import can_return_tuple

from .configuration_mera import MeraConfig, MeraModalityConfig
from .connectors import MeraQFormerConnector, build_connector
from .encoders import build_encoder, dummy_item, encode_modality, load_pretrained_encoder

ModalityInputs = dict[str, torch.Tensor | dict[str, torch.Tensor]]


class MeraPreTrainedModel(PreTrainedModel):
    config_class = MeraConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MeraQFormerConnector):
            init.normal_(module.query_tokens, std=module.qformer.config.initializer_range)
        elif isinstance(module, MeraModel):
            # In a custom-code model transformers skips every module that holds no parameter of its own, the
            # encoders' included, so an encoder's module-level init (Whisper writes its sinusoidal positions there)
            # is run here. The `init` functions leave weights loaded from the checkpoint untouched.
            for encoder in module.encoders.values():
                if isinstance(encoder, PreTrainedModel) and not list(encoder.parameters(recurse=False)):
                    encoder._init_weights(encoder)

    def _initialize_weights(self, module, is_custom_code: bool = False):
        # transformers skips parameter-less modules of custom-code models in case their `_init_weights` writes in
        # place over loaded weights; this `_init_weights` only uses the flag-respecting `init` functions.
        super()._initialize_weights(module, is_custom_code=False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        # PEFT 0.21 reads this alias, deprecated in transformers 5.24, whenever it wraps a model; answer it with the
        # current name so that every LoRA stage does not print a FutureWarning.
        return self.is_activation_checkpointing


class MeraModel(MeraPreTrainedModel):
    """
    The MERA backbone without the LM head: `encoders` and `connectors` (`nn.ModuleDict`s keyed by modality) and
    `language_model` (any `AutoModel` decoder).
    """

    def __init__(self, config: MeraConfig):
        super().__init__(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.encoders = nn.ModuleDict()
        self.connectors = nn.ModuleDict()
        for name in config.modalities:
            self._build_modality(name, config.modality(name))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def _build_modality(self, name: str, modality: MeraModalityConfig, encoder: nn.Module | None = None):
        if encoder is None:
            encoder = build_encoder(modality, attn_implementation=self.config._attn_implementation)
        self.encoders[name] = encoder
        self.connectors[name] = build_connector(
            modality.connector, modality.encoder_hidden_size, self.config.text_config.hidden_size
        )
        if self.config.freeze_encoders:
            self.encoders[name].requires_grad_(False)

    def get_modality_features(self, modality: str, inputs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """Encode one modality's items and project them: `(items, num_tokens, text hidden size)`."""
        if modality not in self.connectors:
            raise ValueError(f"unknown modality {modality!r}; this model knows {list(self.connectors)}")
        encoder = self.encoders[modality]
        frozen = not any(parameter.requires_grad for parameter in encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            features = encode_modality(modality, encoder, self.config.modality(modality), inputs)
        connector = self.connectors[modality]
        return connector(features.to(next(connector.parameters()).dtype))

    def get_placeholder_mask(
        self, modality: str, input_ids: torch.LongTensor, inputs_embeds: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        """Mask of `modality`'s placeholder positions, checked against the number of feature tokens."""
        mask = input_ids == self.config.modalities[modality]["placeholder_token_id"]
        num_tokens = int(mask.sum())
        if num_tokens * inputs_embeds.shape[-1] != features.numel():
            raise ValueError(
                f"{modality.replace('_', ' ').capitalize()} features and {modality} tokens do not match, "
                f"tokens: {num_tokens}, features: {features.shape[0] * features.shape[1]}"
            )
        return mask.unsqueeze(-1).expand_as(inputs_embeds)

    def placeholder_mask(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Where `input_ids` hold any modality's placeholder."""
        placeholder_ids = list(self.config.placeholder_token_ids.values())
        return torch.isin(input_ids, torch.tensor(placeholder_ids, device=input_ids.device, dtype=input_ids.dtype))

    def embed_inputs(self, input_ids: torch.LongTensor, modality_inputs: ModalityInputs | None) -> torch.Tensor:
        """Text embeddings with every modality's features scattered into its placeholder positions."""
        placeholder_ids = self.config.placeholder_token_ids
        is_placeholder = self.placeholder_mask(input_ids)
        # Placeholder ids lie outside the vocabulary: swap them for a real id before the lookup, then overwrite.
        pad_id = self.config.text_config.pad_token_id or 0
        inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(is_placeholder, pad_id))
        modality_inputs = modality_inputs or {}
        for modality, token_id in placeholder_ids.items():
            if modality not in modality_inputs and (input_ids == token_id).any():
                raise ValueError(
                    f"input_ids contain {int((input_ids == token_id).sum())} {modality} placeholder tokens "
                    f"(id {token_id}) but no {modality} inputs were given"
                )
        for modality, inputs in modality_inputs.items():
            features = self.get_modality_features(modality, inputs)
            features = features.to(inputs_embeds.device, inputs_embeds.dtype)
            mask = self.get_placeholder_mask(modality, input_ids, inputs_embeds, features)
            inputs_embeds = inputs_embeds.masked_scatter(mask, features)
        return inputs_embeds

    def collect_modality_inputs(self, modality_inputs: ModalityInputs | None, kwargs: dict) -> ModalityInputs:
        """Merge `modality_inputs` with modality keywords popped from `kwargs`; reject unknown modalities."""
        collected = dict(modality_inputs or {})
        for name in self.config.modalities:
            if name in kwargs:
                value = kwargs.pop(name)
                if value is None:
                    continue
                if name in collected:
                    raise ValueError(f"{name} inputs were given twice: as a keyword and in modality_inputs")
                collected[name] = value
        unknown = sorted(set(collected) - set(self.config.modalities))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; this model knows {list(self.config.modalities)}")
        return collected

    def expand_modality_inputs(
        self, input_ids: torch.LongTensor, modality_inputs: ModalityInputs, expand_size: int
    ) -> ModalityInputs:
        """
        The modality inputs of `input_ids.repeat_interleave(expand_size, dim=0)`: each prompt's own group of items
        repeated as a whole ([A, B] -> [A, B, A, B]), since items are consumed in placeholder order.
        """
        expanded = {}
        for name, inputs in modality_inputs.items():
            num_tokens = self.config.modalities[name]["num_tokens"]
            tokens_per_prompt = (input_ids == self.config.modalities[name]["placeholder_token_id"]).sum(-1)
            if (tokens_per_prompt % num_tokens).any():
                raise ValueError(
                    f"a prompt holds {tokens_per_prompt.tolist()} {name} placeholder tokens, not a multiple of the "
                    f"{num_tokens} tokens one {name} item takes"
                )
            ends = (tokens_per_prompt // num_tokens).cumsum(0).tolist()
            index = [
                item for start, end in zip([0, *ends[:-1]], ends) for item in list(range(start, end)) * expand_size
            ]
            index = torch.tensor(index, dtype=torch.long)
            if isinstance(inputs, dict):
                expanded[name] = {key: value.index_select(0, index.to(value.device)) for key, value in inputs.items()}
            else:
                expanded[name] = inputs.index_select(0, index.to(inputs.device))
        return expanded

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        modality_inputs: ModalityInputs | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        modality_inputs = self.collect_modality_inputs(modality_inputs, kwargs)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, modality_inputs)
        elif modality_inputs:
            raise ValueError("modality inputs need input_ids to find their placeholders; got inputs_embeds instead")
        return self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )


class MeraForCausalLM(MeraPreTrainedModel, GenerationMixin):
    r"""
    A causal LM that reads text and any number of modalities (image, video, audio, point cloud, ...).

    Modality inputs are passed either as one keyword per modality (`model(input_ids, image=pixel_values,
    audio={"input_features": ...})`) or as one dict (`modality_inputs={"image": ...}`). Each modality's tensor holds
    the items of that modality in the order their placeholders appear in the batch, so one batch can mix samples of
    different modalities and samples with none.

    Example:

    ```python
    >>> from transformers import AutoModel
    >>> model = AutoModel.from_pretrained("org/mera-4mod", revision="stage-4", trust_remote_code=True)
    ```
    """

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: MeraConfig):
        super().__init__(config)
        self.model = MeraModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        # The input embedding's name depends on the LLM family (embed_tokens, wte, ...): tie to whatever it is.
        embeddings = self.model.language_model.get_input_embeddings()
        embedding_name = next(n for n, m in self.model.language_model.named_modules() if m is embeddings)
        self._tied_weights_keys = {"lm_head.weight": f"model.language_model.{embedding_name}.weight"}
        self.post_init()
        for name, modality in config.modalities.items():
            if modality["num_tokens"] is None:
                modality["num_tokens"] = self.count_feature_tokens(name)

    @classmethod
    def from_language_model(cls, name_or_path: str, **from_pretrained_kwargs) -> "MeraForCausalLM":
        """
        A MERA model with no modality yet around a pre-trained causal LM (a Hub id or folder), e.g.
        `MeraForCausalLM.from_language_model("meta-llama/Meta-Llama-3-8B-Instruct", dtype=torch.float16)`.
        The LM's weights are used as they are, not copied: the shell is built on the meta device.
        """
        language_model = AutoModelForCausalLM.from_pretrained(name_or_path, **from_pretrained_kwargs)
        config = MeraConfig(text_config=language_model.config)
        with torch.device("meta"):
            model = cls(config)
        model.model.language_model = language_model.get_decoder()
        model.lm_head = language_model.get_output_embeddings()
        model.generation_config = language_model.generation_config
        return model

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    @property
    def encoders(self) -> nn.ModuleDict:
        return self.model.encoders

    @property
    def connectors(self) -> nn.ModuleDict:
        return self.model.connectors

    @property
    def modalities(self) -> list[str]:
        return list(self.config.modalities)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.lm_head = new_embeddings

    def get_modality_features(self, modality: str, inputs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.get_modality_features(modality, inputs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        modality_inputs: ModalityInputs | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch, length)`):
            Token ids as `MeraProcessor` makes them: each modality item is a run of `num_tokens` placeholder ids.
        labels (`torch.LongTensor` of shape `(batch, length)`, *optional*):
            Targets for the autoregressive loss; -100 is ignored (prompt and placeholder positions). Already shifted
            targets (sequence or context parallelism) go in `shift_labels`, as for transformers' causal LMs.
        modality_inputs (`dict[str, Tensor | dict]`, *optional*):
            Modality name -> its encoder input (see the class docstring); modality names also work as keywords.
        """
        modality_inputs = self.model.collect_modality_inputs(modality_inputs, kwargs)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            modality_inputs=modality_inputs,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None or kwargs.get("shift_labels") is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        # Field names of the cache differ across transformers 5.x releases: forward whatever the LLM returned.
        extra = {f.name: getattr(outputs, f.name) for f in fields(outputs) if f.name != "last_hidden_state"}
        return CausalLMOutputWithPast(loss=loss, logits=logits, **extra)

    def generate(self, *args, modality_inputs: ModalityInputs | None = None, **kwargs):
        """`GenerationMixin.generate`, taking modality inputs as keywords or as one `modality_inputs` dict."""
        modality_inputs = self.model.collect_modality_inputs(modality_inputs, kwargs)
        if modality_inputs:
            kwargs["modality_inputs"] = modality_inputs
        return super().generate(*args, **kwargs)

    def _expand_inputs_for_generation(
        self,
        expand_size: int = 1,
        is_encoder_decoder: bool = False,
        input_ids: torch.LongTensor | None = None,
        **model_kwargs,
    ) -> tuple[torch.LongTensor, dict]:
        # Beams and returned sequences copy every prompt; each copy needs its prompt's modality items (counted from
        # the placeholders before the ids are expanded), as `_expand_multimodal_outputs` does for LLaVA's features.
        modality_inputs = model_kwargs.pop("modality_inputs", None)
        if modality_inputs and expand_size > 1:
            if input_ids is None or input_ids.shape[-1] == 0:
                raise ValueError("modality inputs need input_ids to find their placeholders, not inputs_embeds")
            modality_inputs = self.model.expand_modality_inputs(input_ids, modality_inputs, expand_size)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        if modality_inputs is not None:
            model_kwargs["modality_inputs"] = modality_inputs
        return input_ids, model_kwargs

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        modality_inputs: ModalityInputs | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ) -> dict:
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        # Features enter through their placeholders, so they go with exactly the passes that feed placeholders: the
        # prefill, every pass without a cache, an assistant's first pass. Afterwards they live in the cache.
        fed_ids = model_inputs.get("input_ids")
        if not modality_inputs or fed_ids is None or not self.model.placeholder_mask(fed_ids).any():
            return model_inputs
        if fed_ids.shape[1] == input_ids.shape[1]:
            model_inputs["modality_inputs"] = modality_inputs
        else:
            # The cache holds part of the placeholders (an assistant re-reading its last prompt tokens): embed the
            # whole sequence with its features and feed the uncached positions as embeddings.
            inputs_embeds = self.model.embed_inputs(input_ids, modality_inputs)
            model_inputs["inputs_embeds"] = inputs_embeds[:, -fed_ids.shape[1] :]
            model_inputs["input_ids"] = None
        return model_inputs

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """`PreTrainedModel.resize_token_embeddings`; placeholder ids that a grown vocabulary covers move above it."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.config.move_placeholders_above_vocabulary()
        return embeddings

    def add_modality(
        self,
        name: str,
        kind: str | None = None,
        encoder_config: PreTrainedConfig | dict | None = None,
        connector: dict | None = None,
        encoder_weights: str | None = None,
        **modality_options,
    ) -> MeraModalityConfig:
        """
        Extend the model with a new modality: a new (frozen) encoder, a freshly initialised connector and a new
        placeholder id. Existing weights are not touched, and the config records the modality, so that
        `from_pretrained` rebuilds the same model.

        Args:
            name: the modality's name, e.g. "audio"; becomes a keyword of `forward`.
            kind: 'image', 'video', 'audio' or 'point_cloud'; defaults to `name` when that is a kind.
            encoder_config: the encoder's config. Not needed when `encoder_weights` is given.
            connector: e.g. `{"type": "mlp", "depth": 2, "activation": "gelu"}` or
                `{"type": "qformer", "num_query_tokens": 32, "qformer_config": {...}, "init_from": ...}`
                (a Q-Former started from that BERT checkpoint, as BLIP-2's is). Defaults to mlp2x_gelu.
            encoder_weights: a Hub id or local folder of a pre-trained encoder to load, or a released BEATs (audio) or
                Point-BERT (point cloud, configured by `encoder_config`) checkpoint file.
            modality_options: further `MeraModalityConfig` fields (num_frames, feature_layer, num_tokens, ...).
        """
        kind = kind or name
        encoder = None
        if encoder_weights is not None:
            encoder = load_pretrained_encoder(kind, encoder_weights, encoder_config)
            if encoder._can_set_attn_implementation():
                encoder.set_attn_implementation(self.config._attn_implementation)
            encoder_config = encoder.config
        if encoder_config is None:
            raise ValueError(f"add_modality({name!r}): give encoder_config or encoder_weights")
        options = {"kind": kind, "encoder_config": encoder_config, **modality_options}
        if connector is not None:
            options["connector"] = connector
        if name in self.config.modalities:
            raise ValueError(f"modality {name!r} already exists; modalities so far: {self.modalities}")
        modality = self.config.add_modality(name, options)
        try:
            self.model._build_modality(name, modality, encoder)
            # The model's init scheme for the connector's layers; what the connector draws itself when built (a
            # Q-Former's queries) is kept, so a seed gives the same model as it always did.
            for child in self.connectors[name].children():
                child.apply(self._init_weights)
            if modality.connector.get("init_from"):
                self.connectors[name].load_bert_weights()
            device, dtype = self.lm_head.weight.device, self.lm_head.weight.dtype
            self.encoders[name].to(device)
            self.connectors[name].to(device, dtype)
            if modality.num_tokens is None:
                modality.num_tokens = self.count_feature_tokens(name)
                self.config.modalities[name]["num_tokens"] = modality.num_tokens
        except Exception:
            # Leave the model as it was: no half-added modality.
            self.config.modalities.pop(name, None)
            for modules in (self.encoders, self.connectors):
                if name in modules:
                    del modules[name]
            raise
        return modality

    @torch.no_grad()
    def count_feature_tokens(self, name: str) -> int:
        """Tokens one item of modality `name` yields, measured by a dry run on an all-zero input."""
        dummy = dummy_item(self.config.modality(name), self.encoders[name])
        return int(self.get_modality_features(name, dummy).shape[1])


__all__ = ["MeraForCausalLM", "MeraModel", "MeraPreTrainedModel"]
