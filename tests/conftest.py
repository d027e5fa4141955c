"""Tiny, real Hugging Face objects built from configs: no network, a few hundred thousand parameters at most."""

import os

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    WhisperConfig,
    WhisperFeatureExtractor,
)

from modeling_mera import MeraConfig, MeraForCausalLM, MeraProcessor, PointBertConfig

WORDS = (
    "a an the is are of in on and what how many which color shape sound describe image video audio point cloud "
    "red green blue yellow circle square triangle star high low tone beat one two three four five cube sphere "
    "cone moving left right up down small large picture clip ? . ,"
).split()

TINY_TEXT = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {token: index for index, token in enumerate(specials + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.add_bos_token = True
    return tokenizer


def tiny_text_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2, **TINY_TEXT)


def tiny_clip_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )


def tiny_whisper_config() -> WhisperConfig:
    # 2 x max_source_positions = 40 mel frames: one second of 16 kHz audio with a hop of 400 samples.
    return WhisperConfig(
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=16,
        max_source_positions=20,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )


def tiny_point_bert_config() -> PointBertConfig:
    return PointBertConfig(
        num_groups=8, group_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
    )


QFORMER = {
    "type": "qformer",
    "num_query_tokens": 4,
    "qformer_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64},
}


def tiny_image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def tiny_audio_processor() -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=400, chunk_length=1, n_fft=400)


def build_tiny_model(modalities=("image", "audio"), seed: int = 0) -> MeraForCausalLM:
    """A tiny Llama with tiny CLIP (image), Whisper-encoder (audio), CLIP-per-frame (video), Point-BERT encoders."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    model = MeraForCausalLM(MeraConfig(text_config=tiny_text_config(len(tokenizer))))
    for name in modalities:
        add_tiny_modality(model, name)
    return model.eval()


def add_tiny_modality(model: MeraForCausalLM, name: str):
    if name == "image":
        model.add_modality(
            "image", encoder_config=tiny_clip_config(), feature_layer=-2, feature_select_strategy="default"
        )
    elif name == "video":
        model.add_modality("video", encoder_config=tiny_clip_config(), feature_select_strategy="default", num_frames=2)
    elif name == "audio":
        model.add_modality("audio", encoder_config=tiny_whisper_config(), connector=QFORMER, max_audio_seconds=1.0)
    elif name == "point_cloud":
        model.add_modality("point_cloud", encoder_config=tiny_point_bert_config(), num_points=64)
    else:
        raise ValueError(name)


def tiny_processor(model: MeraForCausalLM) -> MeraProcessor:
    processors = {}
    for name in model.config.modalities:
        kind = model.config.modality(name).kind
        if kind in ("image", "video"):
            processors[name] = tiny_image_processor()
        elif kind == "audio":
            processors[name] = tiny_audio_processor()
    return MeraProcessor(tiny_tokenizer(), model.config, processors)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """No test may reach a hub: fail fast instead of hanging on the closed network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path_factory.getbasetemp() / "hf_modules"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
