"""
BEATs, the audio encoder of MERA's audio expert (Chen et al., 2023, "BEATs: Audio Pre-Training with Acoustic
Tokenizers", github.com/microsoft/unilm/tree/master/beats). transformers has no BEATs, so it lives here, flat, and
travels with `trust_remote_code` like the rest of `modeling_mera`.

The model takes 16 kHz waveforms and computes BEATs' own features itself, as the original does: Kaldi-compatible log
mel filterbanks (128 bins, 25 ms windows every 10 ms, of the waveform scaled to the 16-bit integer range),
normalised with the fixed mean and standard deviation BEATs was trained with. `BeatsModel.from_official_checkpoint`
loads a released checkpoint file (a torch file holding `cfg` and `model`) as it is.
"""

import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput

from .key_mapping import rename_key

# The original's activation names (fairseq's `get_activation_fn`) and their transformers equivalents.
OFFICIAL_ACTIVATIONS = {
    "gelu": "gelu",
    "relu": "relu",
    "gelu_accurate": "gelu_new",
    "gelu_fast": "gelu_new",
    "tanh": "tanh",
    "linear": "linear",
}
# `cfg` entry of a released checkpoint -> `BeatsConfig` field.
OFFICIAL_CONFIG_NAMES = {
    "input_patch_size": "patch_size",
    "embed_dim": "patch_embedding_size",
    "conv_bias": "conv_bias",
    "encoder_layers": "num_hidden_layers",
    "encoder_embed_dim": "hidden_size",
    "encoder_ffn_embed_dim": "intermediate_size",
    "encoder_attention_heads": "num_attention_heads",
    "activation_fn": "hidden_act",
    "layer_norm_first": "layer_norm_first",
    "deep_norm": "deep_norm",
    "conv_pos": "num_conv_pos_embeddings",
    "conv_pos_groups": "num_conv_pos_embedding_groups",
    "relative_position_embedding": "relative_position_embedding",
    "num_buckets": "num_buckets",
    "max_distance": "max_distance",
    "gru_rel_pos": "gated_relative_position_bias",
}
# `cfg` entries that only matter for pre-training or for the AudioSet classifier, which an encoder does not use.
OFFICIAL_TRAINING_ONLY = {
    "layer_wise_gradient_decay_ratio",
    "dropout",
    "attention_dropout",
    "activation_dropout",
    "encoder_layerdrop",
    "dropout_input",
    "finetuned_model",
    "predictor_dropout",
    "predictor_class",
}


class BeatsConfig(PreTrainedConfig):
    r"""
    Configuration of [`BeatsModel`]. The defaults are those of the original `BEATsConfig`, so that a released
    checkpoint's `cfg` (which sets only what differs) means the same here; `from_official_cfg` translates it.

    Args:
        patch_size: side of the square fbank patches (frames x mel bins) the convolution embeds (`input_patch_size`).
        patch_embedding_size: width of the patch embedding before the projection to `hidden_size` (`embed_dim`).
        layer_norm_first: pre-norm layers (else post-norm, with `deep_norm` scaling of the residuals).
        relative_position_embedding, num_buckets, max_distance: bucketed relative position bias, shared by layers.
        gated_relative_position_bias: each layer gates the shared bias by its queries (`gru_rel_pos`).
        num_mel_bins, sampling_rate, frame_length_ms, frame_shift_ms, fbank_mean, fbank_std: the feature pipeline.
    """

    model_type = "mera_beats"

    def __init__(
        self,
        patch_size: int = -1,
        patch_embedding_size: int = 512,
        conv_bias: bool = False,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        layer_norm_first: bool = False,
        deep_norm: bool = False,
        num_conv_pos_embeddings: int = 128,
        num_conv_pos_embedding_groups: int = 16,
        relative_position_embedding: bool = False,
        num_buckets: int = 320,
        max_distance: int = 1280,
        gated_relative_position_bias: bool = False,
        num_mel_bins: int = 128,
        sampling_rate: int = 16000,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        fbank_mean: float = 15.41663,
        fbank_std: float = 6.55582,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.patch_size = patch_size
        self.patch_embedding_size = patch_embedding_size
        self.conv_bias = conv_bias
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.layer_norm_first = layer_norm_first
        self.deep_norm = deep_norm
        self.num_conv_pos_embeddings = num_conv_pos_embeddings
        self.num_conv_pos_embedding_groups = num_conv_pos_embedding_groups
        self.relative_position_embedding = relative_position_embedding
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.gated_relative_position_bias = gated_relative_position_bias
        self.num_mel_bins = num_mel_bins
        self.sampling_rate = sampling_rate
        self.frame_length_ms = frame_length_ms
        self.frame_shift_ms = frame_shift_ms
        self.fbank_mean = fbank_mean
        self.fbank_std = fbank_std
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @classmethod
    def from_official_cfg(cls, cfg: dict, where: str = "BEATs cfg") -> "BeatsConfig":
        """The config of a released checkpoint's `cfg` dict; an entry this encoder cannot honour is an error."""
        unknown = sorted(set(cfg) - set(OFFICIAL_CONFIG_NAMES) - OFFICIAL_TRAINING_ONLY)
        if unknown:
            known = sorted(set(OFFICIAL_CONFIG_NAMES) | OFFICIAL_TRAINING_ONLY)
            raise ValueError(f"{where}: unknown entries {unknown}; known are {known}")
        if cfg.get("layer_norm_first") and cfg.get("deep_norm"):
            raise ValueError(f"{where}: 'layer_norm_first' and 'deep_norm' exclude each other (as in the original)")
        activation = cfg.get("activation_fn", "gelu")
        if activation not in OFFICIAL_ACTIVATIONS:
            raise ValueError(
                f"{where}: activation_fn {activation!r} is not supported; expected one of "
                f"{sorted(OFFICIAL_ACTIVATIONS)}"
            )
        settings = {OFFICIAL_CONFIG_NAMES[key]: value for key, value in cfg.items() if key in OFFICIAL_CONFIG_NAMES}
        settings["hidden_act"] = OFFICIAL_ACTIVATIONS[activation]
        return cls(**settings)


def kaldi_mel_filterbank(
    num_mel_bins: int, fft_size: int, sampling_rate: float, low_freq: float = 20.0, high_freq: float = 0.0
) -> torch.Tensor:
    """
    Kaldi's triangular mel filters `(num_mel_bins, fft_size // 2 + 1)`: equally spaced on Kaldi's mel scale
    1127 ln(1 + f / 700) between `low_freq` and `high_freq` (<= 0 counts back from Nyquist); the Nyquist bin gets 0.
    """
    nyquist = 0.5 * sampling_rate
    high_freq = high_freq + nyquist if high_freq <= 0.0 else high_freq

    def mel(freq):
        return 1127.0 * torch.log(1.0 + freq / 700.0)

    mel_low, mel_high = (float(mel(torch.tensor(f, dtype=torch.float64))) for f in (low_freq, high_freq))
    mel_step = (mel_high - mel_low) / (num_mel_bins + 1)
    index = torch.arange(num_mel_bins).unsqueeze(1)
    left, centre, right = (mel_low + (index + offset) * mel_step for offset in (0.0, 1.0, 2.0))
    bin_mel = mel(sampling_rate / fft_size * torch.arange(fft_size // 2)).unsqueeze(0)
    rising = (bin_mel - left) / (centre - left)
    falling = (right - bin_mel) / (right - centre)
    weights = torch.minimum(rising, falling).clamp_min(0.0)
    return F.pad(weights, (0, 1))


def kaldi_fbank(
    waveforms: torch.Tensor,
    num_mel_bins: int = 23,
    sampling_rate: float = 16000,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    preemphasis: float = 0.97,
) -> torch.Tensor:
    """
    Log mel filterbank energies `(batch, frames, num_mel_bins)` of `waveforms` `(batch, samples)`, computed as Kaldi's
    `compute-fbank-feats` (and `torchaudio.compliance.kaldi.fbank`) does with its defaults and no dither: frames
    that fit entirely in the signal (snip_edges), DC offset removed per frame, pre-emphasis, Povey window, FFT size the
    next power of two, power spectrum, mel filters from 20 Hz to Nyquist, natural log floored at float epsilon.
    """
    window_size = int(sampling_rate * frame_length_ms / 1000)
    window_shift = int(sampling_rate * frame_shift_ms / 1000)
    if waveforms.shape[-1] < window_size:
        raise ValueError(
            f"audio of {waveforms.shape[-1]} samples is shorter than one {frame_length_ms} ms frame ({window_size} "
            "samples)"
        )
    fft_size = 1 << (window_size - 1).bit_length()
    frames = waveforms.unfold(-1, window_size, window_shift)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    # Pre-emphasis: each sample minus a fraction of its predecessor; the first sample stands in for its own.
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = frames - preemphasis * previous
    window = torch.hann_window(window_size, periodic=False, dtype=frames.dtype, device=frames.device).pow(0.85)
    power = torch.fft.rfft(frames * window, n=fft_size).abs().pow(2.0)
    filters = kaldi_mel_filterbank(num_mel_bins, fft_size, sampling_rate).to(power.device, power.dtype)
    energies = power @ filters.T
    return energies.clamp_min(torch.finfo(energies.dtype).eps).log()


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device=None) -> torch.Tensor:
    """
    Bucket `(length, length)` of each key position relative to each query position, as T5 and BEATs bucket them:
    half of the buckets per direction, exact below a quarter of `num_buckets`, log-spaced up to `max_distance`.
    """
    positions = torch.arange(length, device=device)
    relative = positions.unsqueeze(0) - positions.unsqueeze(1)
    half = num_buckets // 2
    buckets = (relative > 0).long() * half
    distance = relative.abs()
    exact = half // 2
    log_ratio = torch.log(distance.float().clamp_min(1) / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (half - exact)).long()).clamp_max(half - 1)
    return buckets + torch.where(distance < exact, distance, far)


class BeatsPositionalConvEmbedding(nn.Module):
    """A grouped convolution over time with weight normalisation (over all but the kernel axis), then GELU."""

    def __init__(self, config: BeatsConfig):
        super().__init__()
        size, kernel = config.hidden_size, config.num_conv_pos_embeddings
        self.groups = config.num_conv_pos_embedding_groups
        self.weight_v = nn.Parameter(torch.empty(size, size // self.groups, kernel))
        self.weight_g = nn.Parameter(torch.empty(1, 1, kernel))
        self.bias = nn.Parameter(torch.empty(size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        kernel = weight.shape[-1]
        output = F.conv1d(hidden_states.transpose(1, 2), weight, self.bias, padding=kernel // 2, groups=self.groups)
        if kernel % 2 == 0:  # an even kernel padded on both sides yields one step too many
            output = output[..., :-1]
        return F.gelu(output).transpose(1, 2)


class BeatsAttention(nn.Module):
    """Multi-head self-attention plus the shared relative position bias, gated per layer by the queries."""

    def __init__(self, config: BeatsConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        if self.head_dim * self.num_heads != config.hidden_size:
            raise ValueError(
                f"hidden_size ({config.hidden_size}) must be a multiple of num_attention_heads ({self.num_heads})"
            )
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        # The original creates the gate whenever `gru_rel_pos` is set; it only acts on a relative position bias.
        self.gated = config.gated_relative_position_bias
        if self.gated:
            self.gate_linear = nn.Linear(self.head_dim, 8)
            self.gate_scale = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))

    def forward(self, hidden_states: torch.Tensor, position_bias: torch.Tensor | None) -> torch.Tensor:
        batch_size, length, hidden_size = hidden_states.shape

        def heads(projected):
            return projected.view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)

        query = heads(self.q_proj(hidden_states))
        key, value = heads(self.k_proj(hidden_states)), heads(self.v_proj(hidden_states))
        scores = (query * self.head_dim**-0.5) @ key.transpose(-1, -2)
        if position_bias is not None:
            if self.gated:
                # Two sigmoid gates from the unscaled queries turn the shared bias into this layer's own.
                gates = torch.sigmoid(self.gate_linear(query).view(batch_size, self.num_heads, length, 2, 4).sum(-1))
                gate_a, gate_b = gates.chunk(2, dim=-1)
                position_bias = (gate_a * (gate_b * self.gate_scale - 1.0) + 2.0) * position_bias
            scores = scores + position_bias
        probabilities = scores.float().softmax(dim=-1).to(value.dtype)
        attended = (probabilities @ value).transpose(1, 2).reshape(batch_size, length, hidden_size)
        return self.out_proj(attended)


class BeatsLayer(nn.Module):
    """A transformer layer: pre-norm, or post-norm with DeepNorm's residual scaling (2 N)^(1/4)."""

    def __init__(self, config: BeatsConfig):
        super().__init__()
        self.layer_norm_first = config.layer_norm_first
        self.residual_scale = (2 * config.num_hidden_layers) ** 0.25 if config.deep_norm else 1.0
        self.attention = BeatsAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))

    def forward(self, hidden_states: torch.Tensor, position_bias: torch.Tensor | None) -> torch.Tensor:
        if self.layer_norm_first:
            hidden_states = hidden_states + self.attention(self.attention_norm(hidden_states), position_bias)
            return hidden_states + self.feed_forward(self.final_norm(hidden_states))
        attended = self.attention(hidden_states, position_bias)
        hidden_states = self.attention_norm(hidden_states * self.residual_scale + attended)
        return self.final_norm(hidden_states * self.residual_scale + self.feed_forward(hidden_states))


class BeatsEncoder(nn.Module):
    def __init__(self, config: BeatsConfig):
        super().__init__()
        self.config = config
        self.position_conv = BeatsPositionalConvEmbedding(config)
        if config.relative_position_embedding:
            self.relative_position_bias = nn.Embedding(config.num_buckets, config.num_attention_heads)
        self.layers = nn.ModuleList([BeatsLayer(config) for _ in range(config.num_hidden_layers)])
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        hidden_states = hidden_states + self.position_conv(hidden_states)
        if not self.config.layer_norm_first:
            hidden_states = self.layer_norm(hidden_states)
        position_bias = None
        if self.config.relative_position_embedding:
            buckets = relative_position_buckets(
                hidden_states.shape[1], self.config.num_buckets, self.config.max_distance, hidden_states.device
            )
            position_bias = self.relative_position_bias(buckets).permute(2, 0, 1).unsqueeze(0)
        all_hidden_states = (hidden_states,)
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_bias)
            all_hidden_states += (hidden_states,)
        if self.config.layer_norm_first:
            hidden_states = self.layer_norm(hidden_states)
            all_hidden_states = all_hidden_states[:-1] + (hidden_states,)
        return hidden_states, all_hidden_states


class BeatsModel(PreTrainedModel):
    """
    BEATs: 16 kHz waveforms in, one feature vector per fbank patch out.

    Input `input_values`: `(batch, samples)` waveforms in [-1, 1] at `config.sampling_rate`. Output
    `last_hidden_state`: `(batch, frames // patch_size * num_mel_bins // patch_size, hidden_size)`, patches in time
    order, mel bands fastest. The encoder is for inference (MERA keeps it frozen): the original's dropout and layer
    drop, which only act in pre-training, are not part of it.
    """

    config_class = BeatsConfig
    base_model_prefix = "beats"
    main_input_name = "input_values"

    def __init__(self, config: BeatsConfig):
        super().__init__(config)
        if config.patch_size < 1:
            raise ValueError(f"BEATs patch_size must be a positive integer, got {config.patch_size}")
        self.patch_embedding = nn.Conv2d(
            1,
            config.patch_embedding_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=config.conv_bias,
        )
        self.patch_norm = nn.LayerNorm(config.patch_embedding_size, eps=config.layer_norm_eps)
        self.patch_projection = (
            nn.Linear(config.patch_embedding_size, config.hidden_size)
            if config.patch_embedding_size != config.hidden_size
            else None
        )
        self.encoder = BeatsEncoder(config)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, BeatsPositionalConvEmbedding):
            fan_in = module.weight_v.shape[-1] * module.weight_v.shape[0]
            init.normal_(module.weight_v, std=math.sqrt(4.0 / fan_in))
            init.copy_(module.weight_g, module.weight_v.detach().norm(dim=(0, 1), keepdim=True))
            init.zeros_(module.bias)
        elif isinstance(module, BeatsAttention) and module.gated:
            init.ones_(module.gate_scale)

    def fbank(self, input_values: torch.Tensor) -> torch.Tensor:
        """BEATs' normalised filterbanks `(batch, frames, num_mel_bins)`, always computed in float32."""
        config = self.config
        # The original feeds Kaldi the waveform in 16-bit integer range, and halves the normalised features.
        fbank = kaldi_fbank(
            input_values.float() * 2**15,
            config.num_mel_bins,
            config.sampling_rate,
            config.frame_length_ms,
            config.frame_shift_ms,
        )
        return (fbank - config.fbank_mean) / (2 * config.fbank_std)

    def forward(
        self, input_values: torch.Tensor, output_hidden_states: bool = False, return_dict: bool = True, **kwargs
    ) -> BaseModelOutput:
        if input_values.dim() != 2:
            raise ValueError(f"input_values must be waveforms (batch, samples), got shape {tuple(input_values.shape)}")
        fbank = self.fbank(input_values)
        if fbank.shape[1] < self.config.patch_size:
            raise ValueError(
                f"audio too short for BEATs: {fbank.shape[1]} fbank frames, one patch needs {self.config.patch_size}"
            )
        patches = self.patch_embedding(fbank.unsqueeze(1).to(self.patch_embedding.weight.dtype))
        features = self.patch_norm(patches.flatten(2).transpose(1, 2))
        if self.patch_projection is not None:
            features = self.patch_projection(features)
        hidden_states, all_hidden_states = self.encoder(features)
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states if output_hidden_states else None
        )

    @classmethod
    def from_official_checkpoint(cls, path: str | os.PathLike) -> "BeatsModel":
        """
        Load a released BEATs checkpoint file (e.g. `BEATs_iter3_plus_AS2M.pt`): a torch file with `cfg` (the
        original `BEATsConfig` entries) and `model` (the original module's state dict). A fine-tuned checkpoint's
        AudioSet classifier (`predictor`) is dropped: the encoder's features are what comes before it.
        """
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict) or not {"cfg", "model"} <= set(checkpoint):
            found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise ValueError(f"{path}: a BEATs checkpoint holds 'cfg' and 'model' entries, found {found}")
        config = BeatsConfig.from_official_cfg(checkpoint["cfg"], where=f"{path}: cfg")
        model = cls(config)
        state_dict = convert_official_state_dict(
            checkpoint["model"], config, bool(checkpoint["cfg"].get("finetuned_model")), where=str(path)
        )
        model.load_state_dict(state_dict, strict=True)
        return model.eval()


# Official module names -> this module's ({i}: a layer index; see `rename_key`). Every layer's copy of the shared
# relative position embedding maps to the one embedding.
OFFICIAL_NAMES = [
    ("layer_norm.", "patch_norm."),
    ("post_extract_proj.", "patch_projection."),
    ("encoder.pos_conv.0.", "encoder.position_conv."),
    ("encoder.layers.{i}.self_attn.relative_attention_bias.", "encoder.relative_position_bias."),
    ("encoder.layers.{i}.self_attn.grep_linear.", "encoder.layers.{i}.attention.gate_linear."),
    ("encoder.layers.{i}.self_attn.grep_a", "encoder.layers.{i}.attention.gate_scale"),
    ("encoder.layers.{i}.self_attn.", "encoder.layers.{i}.attention."),
    ("encoder.layers.{i}.self_attn_layer_norm.", "encoder.layers.{i}.attention_norm."),
    ("encoder.layers.{i}.final_layer_norm.", "encoder.layers.{i}.final_norm."),
]


def convert_official_state_dict(
    official: dict[str, torch.Tensor], config: BeatsConfig, finetuned: bool = False, where: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """
    The state dict of a [`BeatsModel`] from the original module's. Every key of the original layout must be there and
    nothing else: a missing or unexpected key is an error that names each one. The original shares layer 0's relative
    position embedding with every layer and saves a copy per layer; the copies must agree.
    """
    expected = set(official_state_dict_keys(config, finetuned))
    missing, unexpected = sorted(expected - set(official)), sorted(set(official) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{where}: the BEATs state dict does not match its cfg; missing keys: {missing or 'none'}; unexpected "
            f"keys: {unexpected or 'none'}"
        )
    converted = {}
    for key, tensor in official.items():
        if key.startswith("predictor."):
            continue
        name = rename_key(key, OFFICIAL_NAMES) or key
        if name in converted and not torch.equal(converted[name], tensor):
            raise ValueError(f"{where}: {key} differs from layer 0's, though the original shares it between layers")
        converted[name] = tensor
    return converted


def official_state_dict_keys(config: BeatsConfig, finetuned: bool = False) -> list[str]:
    """Every state-dict key the original `BEATs` module has for `config`."""
    keys = ["patch_embedding.weight", "layer_norm.weight", "layer_norm.bias"]
    keys += ["patch_embedding.bias"] if config.conv_bias else []
    if config.patch_embedding_size != config.hidden_size:
        keys += ["post_extract_proj.weight", "post_extract_proj.bias"]
    keys += [f"encoder.pos_conv.0.{name}" for name in ("bias", "weight_g", "weight_v")]
    keys += ["encoder.layer_norm.weight", "encoder.layer_norm.bias"]
    for index in range(config.num_hidden_layers):
        prefix = f"encoder.layers.{index}."
        for module in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
            "fc1",
            "fc2",
            "self_attn_layer_norm",
            "final_layer_norm",
        ):
            keys += [prefix + module + ".weight", prefix + module + ".bias"]
        if config.relative_position_embedding:
            keys.append(prefix + "self_attn.relative_attention_bias.weight")
        if config.gated_relative_position_bias:
            keys += [
                prefix + "self_attn.grep_linear.weight",
                prefix + "self_attn.grep_linear.bias",
                prefix + "self_attn.grep_a",
            ]
    if finetuned:
        keys += ["predictor.weight", "predictor.bias"]
    return keys


__all__ = ["BeatsConfig", "BeatsModel", "convert_official_state_dict", "kaldi_fbank", "kaldi_mel_filterbank"]
