"""
Encoders: any transformers vision or audio encoder, video as per-frame image encoding with bilinear pooling, the
Point-BERT point-cloud encoder and (in beats.py) the BEATs audio encoder, which transformers does not have.

Each modality kind turns its raw input tensors into a `(items, tokens, encoder_hidden_size)` feature tensor here;
the connector then maps those features to the LLM's embedding space.
"""

import math
import os
import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers import MODEL_MAPPING, AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput

from .beats import BeatsConfig, BeatsModel
from .configuration_mera import MeraModalityConfig, PointBertConfig
from .key_mapping import rename_key


def farthest_point_sample(xyz: torch.Tensor, num_samples: int) -> torch.Tensor:
    """
    Indices `(batch, num_samples)` of points picked by farthest point sampling, with the semantics of the CUDA kernel
    Point-BERT uses (pointnet2_ops' `furthest_point_sample`): start from point 0, then repeatedly take the point
    farthest from those taken so far; points within sqrt(1e-3) of the origin are never taken after the first.
    """
    batch_size, num_points, _ = xyz.shape
    if num_samples > num_points:
        raise ValueError(f"cannot sample {num_samples} centres from a cloud of {num_points} points")
    indices = torch.zeros(batch_size, num_samples, dtype=torch.long, device=xyz.device)
    distance = torch.full((batch_size, num_points), 1e10, device=xyz.device, dtype=xyz.dtype)
    near_origin = (xyz**2).sum(-1) <= 1e-3
    farthest = torch.zeros(batch_size, dtype=torch.long, device=xyz.device)
    batch_index = torch.arange(batch_size, device=xyz.device)
    for i in range(1, num_samples):
        centre = xyz[batch_index, farthest].unsqueeze(1)
        distance = torch.minimum(distance, ((xyz - centre) ** 2).sum(-1))
        # The kernel skips near-origin points; when nothing else is left it falls back to index 0, as argmax does.
        farthest = distance.masked_fill(near_origin, -1.0).argmax(-1)
        indices[:, i] = farthest
    return indices


def group_points(points: torch.Tensor, num_groups: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Cut clouds `(batch, points, channels)` into local patches as Point-BERT does: FPS centres (on xyz) and their
    `group_size` nearest neighbours, with the neighbours' xyz made relative to their centre (other channels unchanged).

    Returns the patches `(batch, groups, group_size, channels)` and the centres' xyz `(batch, groups, 3)`.
    """
    xyz = points[..., :3]
    batch_index = torch.arange(points.shape[0], device=points.device).unsqueeze(-1)
    centres = xyz[batch_index, farthest_point_sample(xyz, num_groups)]
    # Squared distances expanded as |c|^2 + |p|^2 - 2 c.p, as Point-BERT's knn_point computes them, so that near-ties
    # at the k-th neighbour break the same way.
    distances = -2 * centres @ xyz.transpose(1, 2)
    distances = distances + (centres**2).sum(-1, keepdim=True) + (xyz**2).sum(-1).unsqueeze(1)
    neighbours = distances.topk(group_size, dim=-1, largest=False).indices
    patches = points[batch_index.unsqueeze(-1), neighbours]
    patches = torch.cat([patches[..., :3] - centres.unsqueeze(2), patches[..., 3:]], dim=-1)
    return patches, centres


class PointBertPatchEmbedding(nn.Module):
    """
    Point-BERT's mini-PointNet: a shared per-point MLP (linear, batch norm, ReLU, linear) max-pooled per patch, the
    patch maximum concatenated to every point, a second such MLP, max-pooled again; then a projection to the
    transformer's width.
    """

    def __init__(self, config: PointBertConfig):
        super().__init__()
        self.first_conv = nn.Linear(config.point_channels, 128)
        self.first_norm = nn.BatchNorm1d(128)
        self.first_proj = nn.Linear(128, 256)
        self.second_conv = nn.Linear(512, 512)
        self.second_norm = nn.BatchNorm1d(512)
        self.second_proj = nn.Linear(512, config.encoder_dims)
        self.projection = nn.Linear(config.encoder_dims, config.hidden_size)

    @staticmethod
    def _pointwise(features: torch.Tensor, conv: nn.Linear, norm: nn.BatchNorm1d, proj: nn.Linear) -> torch.Tensor:
        hidden = conv(features)
        hidden = norm(hidden.flatten(0, -2)).view_as(hidden)  # batch statistics over every point of every patch
        return proj(F.relu(hidden))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        point_features = self._pointwise(patches, self.first_conv, self.first_norm, self.first_proj)
        patch_max = point_features.max(dim=2, keepdim=True).values.expand_as(point_features)
        point_features = torch.cat([patch_max, point_features], dim=-1)
        point_features = self._pointwise(point_features, self.second_conv, self.second_norm, self.second_proj)
        return self.projection(point_features.max(dim=2).values)


class PointBertAttention(nn.Module):
    def __init__(self, config: PointBertConfig):
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"hidden_size ({config.hidden_size}) must be a multiple of num_attention_heads "
                f"({config.num_attention_heads})"
            )
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, length, hidden_size = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch_size, length, 3, self.num_heads, hidden_size // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(query, key, value)
        return self.out_proj(attended.transpose(1, 2).reshape(batch_size, length, hidden_size))


class PointBertLayer(nn.Module):
    def __init__(self, config: PointBertConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = PointBertAttention(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, config.intermediate_size),
            ACT2FN[config.hidden_act],
            nn.Linear(config.intermediate_size, config.hidden_size),
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        normed = self.attention_norm(hidden_states)
        hidden_states = hidden_states + self.attention(normed)
        return hidden_states + self.mlp(self.mlp_norm(hidden_states))


class PointBertModel(PreTrainedModel):
    """
    Point-BERT's point transformer (Yu et al., 2022): FPS + kNN patches centred on their centres, mini-PointNet
    tokens, a CLS token, and a pre-norm transformer to which the centres' positional embedding is added before every
    layer. `from_official_checkpoint` loads the released weights.

    Input `points`: `(batch, num_points, point_channels)`. Output: `(batch, num_groups + 1, hidden_size)`.
    """

    config_class = PointBertConfig
    base_model_prefix = "point_bert"
    main_input_name = "points"

    def __init__(self, config: PointBertConfig):
        super().__init__(config)
        self.patch_embedding = PointBertPatchEmbedding(config)
        self.position_embedding = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, config.hidden_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.cls_position = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.layers = nn.ModuleList([PointBertLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, PointBertModel):
            init.normal_(module.cls_token, std=self.config.initializer_range)
            init.normal_(module.cls_position, std=self.config.initializer_range)

    def train(self, mode: bool = True) -> "PointBertModel":
        # A frozen encoder keeps its batch-norm statistics: training mode would overwrite them with batch statistics.
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.train(mode and module.weight.requires_grad)
        return self

    def forward(self, points: torch.Tensor, output_hidden_states: bool = False, **kwargs) -> BaseModelOutput:
        if points.dim() != 3 or points.shape[-1] != self.config.point_channels:
            raise ValueError(
                f"points must have shape (batch, num_points, {self.config.point_channels}), got {tuple(points.shape)}"
            )
        patches, centres = group_points(points, self.config.num_groups, self.config.group_size)
        tokens = self.patch_embedding(patches)
        positions = self.position_embedding(centres)
        batch_size = tokens.shape[0]
        hidden_states = torch.cat([self.cls_token.expand(batch_size, -1, -1), tokens], dim=1)
        positions = torch.cat([self.cls_position.expand(batch_size, -1, -1), positions], dim=1)
        all_hidden_states = (hidden_states,)
        for layer in self.layers:
            hidden_states = layer(hidden_states + positions)
            all_hidden_states += (hidden_states,)
        hidden_states = self.norm(hidden_states)
        return BaseModelOutput(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states[:-1] + (hidden_states,) if output_hidden_states else None,
        )

    @classmethod
    def from_official_checkpoint(
        cls, path: str | os.PathLike, config: PointBertConfig | None = None
    ) -> "PointBertModel":
        """
        Load a released Point-BERT checkpoint, in either of two layouts:

        - Point-BERT's own (github.com/lulutang0608/Point-BERT, `Point-BERT.pth`): `base_model` holds the pre-training
          model, whose encoder is `transformer_q` (its momentum copy, the dVAE and the queue are dropped, as the
          original's `load_model_from_ckpt` drops them), or a fine-tuned `PointTransformer`;
        - PointLLM's Point-BERT v1.2 (`point_bert_v1.2.pt`, pre-trained with ULIP-2): `state_dict` holds the encoder
          under `module.point_encoder.` beside ULIP-2's other towers, which are dropped as PointLLM drops them.

        Pre-training and classification heads are dropped. `config` gives what the file does not record (heads,
        groups, input channels); Point-BERT's settings by default.
        """
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(checkpoint, dict) and "base_model" in checkpoint:
            weights = checkpoint["base_model"]
        elif isinstance(checkpoint, dict) and "state_dict" in checkpoint:
            prefix = "module.point_encoder."
            weights = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
            if not weights:
                raise ValueError(f"{path}: its 'state_dict' has no point encoder (keys starting with {prefix!r})")
        else:
            found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise ValueError(
                f"{path}: a Point-BERT checkpoint holds a 'base_model' (Point-BERT) or 'state_dict' (PointLLM's v1.2) "
                f"entry, found {found}"
            )
        config = config if config is not None else PointBertConfig()
        model = cls(config)
        state_dict = convert_official_point_bert(weights, model, where=str(path))
        model.load_state_dict(state_dict, strict=True)
        return model.eval()


# Official PointTransformer module names -> PointBertModel's ({i}: a layer index). Conv1d(k=1) weights become Linear.
POINT_BERT_NAMES = [
    ("encoder.first_conv.0.", "patch_embedding.first_conv."),
    ("encoder.first_conv.1.", "patch_embedding.first_norm."),
    ("encoder.first_conv.3.", "patch_embedding.first_proj."),
    ("encoder.second_conv.0.", "patch_embedding.second_conv."),
    ("encoder.second_conv.1.", "patch_embedding.second_norm."),
    ("encoder.second_conv.3.", "patch_embedding.second_proj."),
    ("reduce_dim.", "patch_embedding.projection."),
    ("cls_pos", "cls_position"),
    ("cls_token", "cls_token"),
    ("pos_embed.", "position_embedding."),
    ("blocks.blocks.{i}.norm1.", "layers.{i}.attention_norm."),
    ("blocks.blocks.{i}.attn.qkv.", "layers.{i}.attention.qkv."),
    ("blocks.blocks.{i}.attn.proj.", "layers.{i}.attention.out_proj."),
    ("blocks.blocks.{i}.norm2.", "layers.{i}.mlp_norm."),
    ("blocks.blocks.{i}.mlp.fc1.", "layers.{i}.mlp.0."),
    ("blocks.blocks.{i}.mlp.fc2.", "layers.{i}.mlp.2."),
    ("norm.", "norm."),
]
# Heads of pre-training (masked token prediction, contrastive) and of fine-tuning (classification): not the encoder.
POINT_BERT_HEADS = re.compile(r"(mask_token$|lm_head\.|cls_head\.|cls_head_finetune\.)")
# Parts of the pre-training model beside its encoder `transformer_q`, which the original's loader drops too.
POINT_BERT_PRETRAINING_PARTS = re.compile(r"(transformer_k\.|dvae\.|queue$|queue_ptr$)")


def convert_official_point_bert(
    official: dict[str, torch.Tensor], model: "PointBertModel", where: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """
    `model`'s state dict from a released checkpoint's `base_model`. Every encoder key the original has must be there,
    and no key may be left unexplained: each missing or unexpected one is named (in the checkpoint's naming).
    """
    prefix = re.compile(r"^(module\.)?(base_model\.)?")
    pretraining = any(prefix.sub("", key).startswith("transformer_q.") for key in official)
    encoder_prefix = "transformer_q." if pretraining else ""
    converted, unexpected = {}, []
    for original_key, tensor in official.items():
        key = prefix.sub("", original_key)
        if pretraining and POINT_BERT_PRETRAINING_PARTS.match(key):
            continue
        name = None
        if key.startswith(encoder_prefix) and not POINT_BERT_HEADS.match(key[len(encoder_prefix) :]):
            name = rename_key(key[len(encoder_prefix) :], POINT_BERT_NAMES)
        elif key.startswith(encoder_prefix):
            continue
        if name is None or name in converted:
            unexpected.append(original_key)
            continue
        converted[name] = tensor.squeeze(-1) if name.startswith("patch_embedding.") and tensor.dim() == 3 else tensor
    expected = model.state_dict()
    reverse = [(target, source) for source, target in POINT_BERT_NAMES]
    unexpected += [encoder_prefix + rename_key(name, reverse) for name in converted if name not in expected]
    missing = [encoder_prefix + rename_key(name, reverse) for name in expected if name not in converted]
    if missing or unexpected:
        raise ValueError(
            f"{where}: the Point-BERT weights do not match the encoder config; missing keys: "
            f"{sorted(missing) or 'none'}; unexpected keys: {sorted(unexpected) or 'none'}"
        )
    mismatched = [
        f"{encoder_prefix + rename_key(name, reverse)}: {tuple(tensor.shape)} in the checkpoint, "
        f"{tuple(expected[name].shape)} for the config"
        for name, tensor in converted.items()
        if tensor.shape != expected[name].shape
    ]
    if mismatched:
        raise ValueError(f"{where}: the Point-BERT weights do not match the encoder config: {'; '.join(mismatched)}")
    return converted


def build_encoder(modality: MeraModalityConfig, attn_implementation: str | None = None) -> nn.Module:
    """
    A freshly initialised encoder for `modality` (weights are loaded afterwards, or by `from_pretrained`), using the
    model's `attn_implementation` (the encoder configs are not sub-configs, so the setting is handed over here).
    """
    config = modality.encoder
    # Compare model types, not classes: remote code may load the config module twice under different names.
    if config.model_type == PointBertConfig.model_type:
        return PointBertModel(config)
    if config.model_type == BeatsConfig.model_type:
        return BeatsModel(config)
    encoder = AutoModel.from_config(config, attn_implementation=attn_implementation)
    if getattr(encoder.config, "is_encoder_decoder", False):  # e.g. Whisper: only its encoder encodes audio
        encoder = encoder.get_encoder()
    return encoder


def load_pretrained_encoder(
    kind: str, name_or_path: str, encoder_config: PreTrainedConfig | dict | None = None, **from_pretrained_kwargs
) -> nn.Module:
    """
    Load a pre-trained encoder from a Hub id or a local folder: a CLIP/SigLIP/ViT checkpoint's vision tower for
    'image' and 'video', the encoder of an encoder-decoder audio model (Whisper) or an audio encoder (AST, Wav2Vec2,
    HuBERT, a saved `BeatsModel`) for 'audio', a saved `PointBertModel` for 'point_cloud'.

    A file is a released checkpoint in its authors' layout: a BEATs `.pt` for 'audio', a Point-BERT `.pth` for
    'point_cloud' (whose `encoder_config`, a `PointBertConfig`, gives the settings the file does not record).
    """
    if str(name_or_path).endswith((".pt", ".pth")) and not os.path.isfile(name_or_path):
        raise FileNotFoundError(f"encoder checkpoint file not found: {os.path.abspath(name_or_path)}")
    if os.path.isfile(name_or_path):
        if kind == "audio":
            return BeatsModel.from_official_checkpoint(name_or_path)
        if kind == "point_cloud":
            if isinstance(encoder_config, dict):
                encoder_config = PointBertConfig(**{k: v for k, v in encoder_config.items() if k != "model_type"})
            return PointBertModel.from_official_checkpoint(name_or_path, encoder_config)
        raise ValueError(
            f"{name_or_path}: a checkpoint file is read as a released BEATs (audio) or Point-BERT (point_cloud) "
            f"checkpoint; for {kind!r} give a Hub id or a folder"
        )
    if kind == "point_cloud":
        return PointBertModel.from_pretrained(name_or_path, **from_pretrained_kwargs)
    config_dict, _ = PreTrainedConfig.get_config_dict(name_or_path, **from_pretrained_kwargs)
    if config_dict.get("model_type") == BeatsConfig.model_type:
        return BeatsModel.from_pretrained(name_or_path, **from_pretrained_kwargs)
    config = AutoConfig.from_pretrained(name_or_path, **from_pretrained_kwargs)
    if kind in ("image", "video") and getattr(config, "vision_config", None) is not None:
        config = config.vision_config
    if type(config) not in MODEL_MAPPING:
        raise ValueError(f"{name_or_path}: no transformers model class for config {type(config).__name__}")
    model_class = MODEL_MAPPING[type(config)]
    encoder = model_class.from_pretrained(name_or_path, config=config, **from_pretrained_kwargs)
    if getattr(encoder.config, "is_encoder_decoder", False):
        encoder = encoder.get_encoder()
    return encoder


def expected_item_shape(modality: MeraModalityConfig, encoder: nn.Module) -> tuple[int | None, ...]:
    """Shape of one item's main encoder input as the processor makes it; None where any length is accepted."""
    config = modality.encoder
    if modality.kind in ("image", "video"):
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        shape = (getattr(config, "num_channels", 3), size, size)
        return (modality.num_frames, *shape) if modality.kind == "video" else shape
    if modality.kind == "point_cloud":
        return (None, config.point_channels)
    if config.model_type == "audio-spectrogram-transformer":
        return (config.max_length, config.num_mel_bins)
    if encoder.main_input_name == "input_features":
        if hasattr(config, "max_source_positions"):  # Whisper's encoder takes exactly 2 x max_source_positions frames
            return (config.num_mel_bins, 2 * config.max_source_positions)
        return (config.num_mel_bins, None)
    return (None,)  # a raw waveform (Wav2Vec2, HuBERT, ...)


def dummy_item(modality: MeraModalityConfig, encoder: nn.Module) -> torch.Tensor:
    """One item (batch of 1) shaped as the processor shapes real ones, for measuring the token count."""
    shape = expected_item_shape(modality, encoder)
    if modality.kind == "point_cloud":
        shape = (modality.num_points, shape[1])
    else:
        shape = tuple(int(modality.max_audio_seconds * modality.sampling_rate) if n is None else n for n in shape)
    device = next(encoder.parameters()).device
    return torch.zeros(1, *shape, device=device).uniform_(-1, 1)


def check_item_shape(name: str, modality: MeraModalityConfig, encoder: nn.Module, inputs: torch.Tensor):
    expected = expected_item_shape(modality, encoder)
    actual = tuple(inputs.shape[1:])
    if len(actual) != len(expected) or any(e is not None and e != a for e, a in zip(expected, actual)):
        expected_text = ", ".join("any" if n is None else str(n) for n in expected)
        raise ValueError(
            f"{name} inputs must have shape (items, {expected_text}) for this model's {modality.kind} encoder, "
            f"got {tuple(inputs.shape)}"
        )


def _select_hidden_state(encoder: nn.Module, inputs: dict, modality: MeraModalityConfig) -> torch.Tensor:
    if modality.feature_layer == -1:
        hidden_states = encoder(**inputs, return_dict=True).last_hidden_state
    else:
        hidden_states = encoder(**inputs, output_hidden_states=True, return_dict=True).hidden_states
        hidden_states = hidden_states[modality.feature_layer]
    if modality.feature_select_strategy == "default":
        hidden_states = hidden_states[:, 1:]
    return hidden_states


def pool_frame_tokens(frame_features: torch.Tensor, factor: int) -> torch.Tensor:
    """Downsample each frame's square token grid `(frames, grid*grid, dim)` by `factor` with bilinear pooling."""
    if factor == 1:
        return frame_features
    num_frames, num_tokens, dim = frame_features.shape
    grid = math.isqrt(num_tokens)
    if grid * grid != num_tokens:
        raise ValueError(
            f"video frame pooling needs a square grid of frame tokens, got {num_tokens}; with a CLS token use "
            "feature_select_strategy='default'"
        )
    pooled_grid = max(1, grid // factor)
    grid_features = frame_features.transpose(1, 2).reshape(num_frames, dim, grid, grid)
    pooled = F.interpolate(grid_features, size=(pooled_grid, pooled_grid), mode="bilinear", align_corners=False)
    return pooled.flatten(2).transpose(1, 2)


def encode_modality(
    name: str, encoder: nn.Module, modality: MeraModalityConfig, inputs: torch.Tensor | dict[str, torch.Tensor]
) -> torch.Tensor:
    """
    Run `encoder` on one modality's batch of items and return features `(items, tokens, encoder_hidden_size)`.

    `inputs` is the main input tensor (image `pixel_values` `(items, C, H, W)`; video `pixel_values`
    `(items, frames, C, H, W)`; audio `input_features` or `input_values`; point-cloud `points`) or a dict of keyword
    arguments for the encoder.
    """
    if not isinstance(inputs, dict):
        inputs = {encoder.main_input_name: inputs}
    main_input = "pixel_values" if modality.kind == "video" else encoder.main_input_name
    if main_input not in inputs:
        raise ValueError(f"{name} inputs must contain {main_input!r}, got keys {sorted(inputs)}")
    check_item_shape(name, modality, encoder, inputs[main_input])
    dtype = next(encoder.parameters()).dtype
    inputs = {key: value.to(dtype) if value.is_floating_point() else value for key, value in inputs.items()}
    if modality.kind != "video":
        return _select_hidden_state(encoder, inputs, modality)
    pixel_values = inputs.pop("pixel_values")
    num_clips, num_frames = pixel_values.shape[:2]
    frame_features = _select_hidden_state(encoder, {"pixel_values": pixel_values.flatten(0, 1), **inputs}, modality)
    frame_features = pool_frame_tokens(frame_features, modality.frame_pooling)
    return frame_features.reshape(num_clips, num_frames * frame_features.shape[1], frame_features.shape[2])
