"""Tiny, real Hugging Face objects built from configs: no network, a few hundred thousand parameters at most."""

import json
import os
from pathlib import Path

# Tiny models: thread synchronisation outweighs the arithmetic, so one thread is faster (and inherited by the
# recipes the tests start as subprocesses). Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    WhisperConfig,
    WhisperFeatureExtractor,
)

from modeling_mera import MeraConfig, MeraForCausalLM, MeraProcessor, PointBertConfig

# Prepended to scripts run in a fresh process: a saved or downloaded stage must load with transformers alone, so
# importing the project there is an error.
REFUSE_PROJECT_IMPORTS = """
import importlib.abc, sys
class RefuseProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"modeling_mera", "trainers", "recipes"}:
            raise ImportError(f"{name} must not be imported")
sys.meta_path.insert(0, RefuseProject())
"""

WORDS = (
    "a an the is are of in on and what how many which color shape sound describe image video audio point cloud "
    "red green blue yellow circle square triangle star high low tone beat one two three four five cube sphere "
    "cone moving left right up down small large picture clip it ? . ,"
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


def tiny_image_processor() -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


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


TOY_COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
TOY_TONES = {"high": 3000.0, "low": 200.0}
TOY_SHAPES = ("cube", "sphere")


def toy_samples(folder, modality: str, count: int, seed: int = 0) -> list[dict]:
    """
    Samples whose answers depend on the media, written as real files (.png images, .wav audio, .npy clouds) so that
    the lazy readers are exercised: a caption and a QA pair per item.
    """
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        if modality == "image":
            word = list(TOY_COLORS)[index % len(TOY_COLORS)]
            pixels = np.clip(np.array(TOY_COLORS[word]) + rng.integers(-20, 20, (32, 32, 3)), 0, 255)
            path = folder / f"image-{index}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            caption, question, answer = f"a {word} square", "what color is it ?", word
        elif modality == "audio":
            word = list(TOY_TONES)[index % len(TOY_TONES)]
            time = np.arange(16000) / 16000
            waveform = 0.5 * np.sin(2 * np.pi * TOY_TONES[word] * time) + 0.01 * rng.standard_normal(16000)
            path = folder / f"audio-{index}.wav"
            _write_wav(path, waveform, 16000)
            caption, question, answer = f"a {word} tone", "how is the tone ?", word
        elif modality == "point_cloud":
            word = TOY_SHAPES[index % len(TOY_SHAPES)]
            points = rng.uniform(-1, 1, (256, 3))
            points = points / np.linalg.norm(points, axis=1, keepdims=True) if word == "sphere" else points
            path = folder / f"cloud-{index}.npy"
            np.save(path, points.astype(np.float32))
            caption, question, answer = f"a {word}", "which shape is it ?", word
        else:
            raise ValueError(modality)
        common = {"modality": modality, "media": str(path)}
        caption_sample = {"prompt": f"describe the {modality} .", "answer": caption, "task": "caption", **common}
        qa_sample = {"prompt": question, "answer": answer, "task": "qa", **common}
        samples.append({"id": f"{modality}-{index}-c", "dataset": f"toy-{modality}-caption", **caption_sample})
        samples.append({"id": f"{modality}-{index}-q", "dataset": f"toy-{modality}-qa", **qa_sample})
    return samples


def _write_wav(path, waveform, rate):
    import wave

    with wave.open(str(path), "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes((np.clip(waveform, -1, 1) * 32767).astype(np.int16).tobytes())


TINY_PHASE_ARGS = {"warmup_steps": 0, "disable_tqdm": True}


def write_tiny_run(folder, modalities=("image", "audio", "point_cloud"), samples_per_modality: int = 4) -> Path:
    """A tiny language model folder, toy train/test JSONL files and a YAML run config pointing at them."""
    import yaml
    from transformers import LlamaForCausalLM

    folder = Path(folder)
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    LlamaForCausalLM(tiny_text_config(len(tokenizer))).save_pretrained(folder / "lm")
    tokenizer.save_pretrained(folder / "lm")
    image_processor = {
        "processor_class": "CLIPImageProcessorPil",
        "size": {"shortest_edge": 32},
        "crop_size": {"height": 32, "width": 32},
    }
    audio_processor = {
        "processor_class": "WhisperFeatureExtractor",
        "feature_size": 16,
        "hop_length": 400,
        "chunk_length": 1,
        "n_fft": 400,
    }
    specs = {
        "image": {"encoder_config": tiny_clip_config().to_dict(), "feature_processor": image_processor,
                  "options": {"feature_layer": -2, "feature_select_strategy": "default"}},
        "audio": {"encoder_config": tiny_whisper_config().to_dict(), "connector": QFORMER,
                  "feature_processor": audio_processor, "options": {"max_audio_seconds": 1.0}},
        "point_cloud": {"encoder_config": tiny_point_bert_config().to_dict(), "options": {"num_points": 64}},
    }  # fmt: skip
    entries = []
    for index, name in enumerate(modalities):
        for split, seed in (("train", index), ("test", 100 + index)):
            samples = toy_samples(folder / "data" / name / split, name, samples_per_modality, seed=seed)
            lines = [
                json.dumps({**s, "media": str(Path(s["media"]).relative_to(folder / "data" / name))}) for s in samples
            ]
            (folder / "data" / name / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        entries.append({"name": name, **specs[name], "train": f"{name}/train.jsonl", "test": f"{name}/test.jsonl"})
    config = {
        "language_model": str(folder / "lm"),
        "modalities": entries,
        "output_dir": str(folder / "run"),
        "data_root": str(folder / "data"),
        "method": "mera",
        "replay_ratio": 25,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        **{f"{phase}_per_device_train_batch_size": 4 for phase in ("pretrain", "finetune", "realign")},
        "pretrain_num_train_epochs": 2,
        "pretrain_learning_rate": 1e-2,
        "finetune_num_train_epochs": 8,
        "finetune_learning_rate": 1e-2,
        "finetune_connector_learning_rate": 1e-3,
        "realign_num_train_epochs": 2,
        "realign_learning_rate": 1e-3,
        "pretrain_args": TINY_PHASE_ARGS,
        "finetune_args": TINY_PHASE_ARGS,
        "realign_args": TINY_PHASE_ARGS,
        "seed": 0,
        "eval_batch_size": 8,
        "max_new_tokens": 4,
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def accelerate_launch_cpu(num_processes: int, script, *args: str, timeout: int = 600, env: dict | None = None):
    """
    `accelerate launch` of `script` on `num_processes` CPU processes talking over gloo.

    `accelerate launch --cpu --num_processes N` starts a single process unless MPI is set up (its CPU launcher is
    mpirun); the multi-process launcher with `ACCELERATE_USE_CPU=true` starts N processes and accelerate's state
    then reads MULTI_CPU (gloo), as on a CPU cluster.
    """
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    launcher = ["--multi_gpu"] if num_processes > 1 else ["--cpu"]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", str(num_processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script), *args,
    ]  # fmt: skip
    environment = {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), str(root / "tests"), os.environ.get("PYTHONPATH")])),
        **(env or {}),
    }
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment, cwd=root)
