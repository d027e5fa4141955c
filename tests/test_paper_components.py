"""
The paper's pretrained components: BEATs (audio), Point-BERT (point clouds) and a Q-Former started from BERT.

Each loads a tiny synthetic checkpoint in its authors' layout and must reproduce, to 1e-5, what the original
implementation computed on it. The originals were run once outside the project (their code is not part of it); only
their outputs are kept, in tests/fixtures/*.json, whose "about" says how each checkpoint and input were made. The
checkpoints are rebuilt here by the same rule: every tensor drawn from a generator seeded by the crc32 of its key.
"""

import json
import shutil
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QFORMER, REFUSE_PROJECT_IMPORTS, build_tiny_model, tiny_processor, toy_samples, write_tiny_run
from transformers import BertConfig, BertForPreTraining, Wav2Vec2FeatureExtractor

from modeling_mera import BeatsModel, MeraForCausalLM, PointBertConfig, PointBertModel
from modeling_mera.beats import kaldi_fbank
from modeling_mera.connectors import MeraQFormerConnector
from modeling_mera.encoders import load_pretrained_encoder
from trainers.data import load_samples
from trainers.settings import ModalitySpec, StageSettings
from trainers.stage import run_stage

FIXTURES = Path(__file__).parent / "fixtures"
TOLERANCE = 1e-5


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def deterministic_state_dict(shapes: dict[str, list[int]], scale: float = 0.2) -> dict[str, torch.Tensor]:
    """The fixtures' rule: N(0, scale^2) per key from a generator seeded by crc32(key); running_var 0.5 + U(0, 1)."""
    state = {}
    for key, shape in shapes.items():
        generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * scale
    return state


# --- BEATs ---------------------------------------------------------------------------------------------------------
def beats_waveforms() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    time = torch.arange(6000) / 16000
    tone = torch.stack([0.3 * torch.sin(2 * torch.pi * 440 * time), torch.zeros(6000)])
    return tone + 0.05 * torch.randn(2, 6000, generator=generator)


def official_beats_checkpoint(reference: dict) -> dict:
    state = deterministic_state_dict(reference["shapes"])
    shared = state["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    for key in state:
        if "relative_attention_bias" in key:  # the original shares layer 0's embedding and saves a copy per layer
            state[key] = shared
    return {"cfg": reference["cfg"], "model": state}


def save_beats_checkpoint(folder: Path, checkpoint: dict | None = None) -> Path:
    path = folder / "BEATs_tiny.pt"
    torch.save(checkpoint or official_beats_checkpoint(fixture("beats_reference.json")), path)
    return path


def test_kaldi_fbank_matches_torchaudio_and_kaldi_native_fbank():
    reference = fixture("beats_reference.json")
    clip = beats_waveforms()[:1, :1000] * 2**15
    fbank = kaldi_fbank(clip, num_mel_bins=128, sampling_rate=16000, frame_length_ms=25, frame_shift_ms=10)[0]
    torch.testing.assert_close(fbank, torch.tensor(reference["fbank"]), rtol=0, atol=TOLERANCE)
    # An independent Kaldi implementation (C++), 80 bins: it agrees with torchaudio to ~7e-5 in log energy.
    fbank80 = kaldi_fbank(clip, num_mel_bins=80)[0]
    assert (fbank80 - torch.tensor(reference["fbank80_knf"])).abs().max() < 2e-4
    with pytest.raises(ValueError, match="shorter than one 25.0 ms frame"):
        kaldi_fbank(torch.zeros(1, 399))


def test_beats_reproduces_the_original_on_its_released_layout(tmp_path):
    reference = fixture("beats_reference.json")
    model = BeatsModel.from_official_checkpoint(save_beats_checkpoint(tmp_path))
    assert not model.training and model.config.deep_norm and model.config.gated_relative_position_bias
    with torch.no_grad():
        features = model(beats_waveforms()).last_hidden_state
    expected = torch.tensor(reference["features"])
    assert features.shape == expected.shape == (2, 16, 16)  # 36 frames -> 2 x 8 patches of 16 x 16
    torch.testing.assert_close(features, expected, rtol=0, atol=TOLERANCE)
    # A saved BeatsModel folder loads back to the same function.
    model.save_pretrained(tmp_path / "saved")
    with torch.no_grad():
        again = BeatsModel.from_pretrained(tmp_path / "saved").eval()(beats_waveforms()).last_hidden_state
    torch.testing.assert_close(again, features, rtol=0, atol=0)


def test_beats_rejects_missing_unexpected_and_unknown_entries(tmp_path):
    checkpoint = official_beats_checkpoint(fixture("beats_reference.json"))
    del checkpoint["model"]["encoder.layers.1.fc2.bias"]
    checkpoint["model"]["encoder.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    with pytest.raises(ValueError) as error:
        BeatsModel.from_official_checkpoint(save_beats_checkpoint(tmp_path, checkpoint))
    assert "missing keys: ['encoder.layers.1.fc2.bias']" in str(error.value)
    assert "unexpected keys: ['encoder.layers.0.self_attn.extra.weight']" in str(error.value)
    assert "BEATs_tiny.pt" in str(error.value)

    checkpoint = official_beats_checkpoint(fixture("beats_reference.json"))
    checkpoint["cfg"]["fancy_option"] = True
    with pytest.raises(ValueError, match=r"cfg: unknown entries \['fancy_option'\]"):
        BeatsModel.from_official_checkpoint(save_beats_checkpoint(tmp_path, checkpoint))
    with pytest.raises(FileNotFoundError, match="encoder checkpoint file not found: .*BEATs_iter3_plus_AS2M.pt"):
        load_pretrained_encoder("audio", str(tmp_path / "BEATs_iter3_plus_AS2M.pt"))
    torch.save({"model": {}}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="holds 'cfg' and 'model' entries, found \\['model'\\]"):
        BeatsModel.from_official_checkpoint(tmp_path / "bare.pt")


# --- Point-BERT ----------------------------------------------------------------------------------------------------
def point_bert_config(reference: dict) -> PointBertConfig:
    settings = reference["encoder"]
    return PointBertConfig(
        num_groups=settings["num_group"],
        group_size=settings["group_size"],
        encoder_dims=settings["encoder_dims"],
        hidden_size=settings["trans_dim"],
        num_hidden_layers=settings["depth"],
        num_attention_heads=settings["num_heads"],
        intermediate_size=4 * settings["trans_dim"],
    )


def official_point_bert_checkpoint(reference: dict) -> dict:
    base_model = deterministic_state_dict(reference["shapes"])
    base_model["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {"base_model": base_model, "epoch": 300}


def point_bert_inputs() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(2, 256, 3, generator=generator) * 2 - 1
    points[0, 3] = torch.tensor([0.01, -0.02, 0.005])
    points[1, 7] = 0.0
    return points


def save_point_bert_checkpoint(folder: Path, checkpoint: dict | None = None) -> Path:
    path = folder / "Point-BERT_tiny.pth"
    torch.save(checkpoint or official_point_bert_checkpoint(fixture("point_bert_reference.json")), path)
    return path


def test_point_bert_reproduces_the_original_on_its_released_layout(tmp_path):
    reference = fixture("point_bert_reference.json")
    model = PointBertModel.from_official_checkpoint(save_point_bert_checkpoint(tmp_path), point_bert_config(reference))
    with torch.no_grad():
        features = model(point_bert_inputs()).last_hidden_state
    expected = torch.tensor(reference["features"])
    assert features.shape == expected.shape == (2, 17, 32)  # CLS + 16 groups
    torch.testing.assert_close(features, expected, rtol=0, atol=TOLERANCE)


def test_point_bert_rejects_missing_and_unexpected_keys(tmp_path):
    reference = fixture("point_bert_reference.json")
    checkpoint = official_point_bert_checkpoint(reference)
    del checkpoint["base_model"]["module.transformer_q.blocks.blocks.1.norm2.bias"]
    checkpoint["base_model"]["module.transformer_q.extra_head.weight"] = torch.zeros(2)
    checkpoint["base_model"]["module.momentum_encoder.weight"] = torch.zeros(2)
    with pytest.raises(ValueError) as error:
        PointBertModel.from_official_checkpoint(
            save_point_bert_checkpoint(tmp_path, checkpoint), point_bert_config(reference)
        )
    message = str(error.value)
    assert "missing keys: ['transformer_q.blocks.blocks.1.norm2.bias']" in message
    assert "'module.transformer_q.extra_head.weight'" in message and "'module.momentum_encoder.weight'" in message
    # A config that contradicts the file's shapes names the tensor and both shapes.
    with pytest.raises(ValueError, match=r"transformer_q.cls_token: \(1, 1, 32\) in the checkpoint, \(1, 1, 64\)"):
        wider = point_bert_config(reference)
        wider.hidden_size, wider.intermediate_size = 64, 256
        PointBertModel.from_official_checkpoint(save_point_bert_checkpoint(tmp_path), wider)


def test_frozen_point_bert_keeps_its_batch_norm_statistics(tmp_path):
    reference = fixture("point_bert_reference.json")
    model = PointBertModel.from_official_checkpoint(save_point_bert_checkpoint(tmp_path), point_bert_config(reference))
    model.requires_grad_(False).train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with torch.no_grad():
        features = model(point_bert_inputs()).last_hidden_state
    torch.testing.assert_close(features, torch.tensor(reference["features"]), rtol=0, atol=TOLERANCE)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    model.requires_grad_(True).train()  # a trainable encoder learns its statistics, as the original's fine-tuning
    model(point_bert_inputs())
    assert not torch.equal(
        model.patch_embedding.first_norm.running_mean, before["patch_embedding.first_norm.running_mean"]
    )


# --- Q-Former from BERT ---------------------------------------------------------------------------------------------
def save_tiny_bert(folder: Path, reference: dict) -> Path:
    bert = BertForPreTraining(BertConfig(**reference["bert_config"]))
    bert.load_state_dict(
        deterministic_state_dict({key: list(value.shape) for key, value in bert.state_dict().items()})
    )
    bert.save_pretrained(folder)
    return folder


def qformer_connector(reference: dict, init_from: Path) -> MeraQFormerConnector:
    bert = reference["bert_config"]
    shape = {
        key: bert[key] for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    }
    qformer_config = {**shape, "cross_attention_frequency": reference["cross_attention_freq"]}
    return MeraQFormerConnector(
        reference["vision_width"], 8, reference["num_query_token"], qformer_config, init_from=str(init_from)
    )


def test_qformer_started_from_bert_reproduces_lavis(tmp_path):
    reference = fixture("qformer_bert_reference.json")
    bert_folder = save_tiny_bert(tmp_path / "bert", reference)
    connector = qformer_connector(reference, bert_folder)
    torch.manual_seed(1)
    new = connector.load_bert_weights()
    # Only cross-attention (every second layer from 0) stays new; BLIP-2 draws the query tokens anew too.
    assert new and all(
        ".crossattention." in name and name.startswith(("encoder.layer.0.", "encoder.layer.2.")) for name in new
    )
    assert 0.01 < connector.query_tokens.std().item() < 0.04  # normal, std initializer_range = 0.02

    bert = BertForPreTraining.from_pretrained(bert_folder).bert.state_dict()
    qformer = connector.qformer.state_dict()
    for bert_name, qformer_name in [
        ("embeddings.LayerNorm.weight", "layernorm.weight"),
        ("encoder.layer.1.attention.self.query.weight", "encoder.layer.1.attention.attention.query.weight"),
        ("encoder.layer.2.attention.output.LayerNorm.bias", "encoder.layer.2.attention.output.LayerNorm.bias"),
        ("encoder.layer.0.intermediate.dense.weight", "encoder.layer.0.intermediate_query.dense.weight"),
        ("encoder.layer.2.output.dense.bias", "encoder.layer.2.output_query.dense.bias"),
    ]:
        assert torch.equal(bert[bert_name], qformer[qformer_name]), qformer_name

    # With the new weights set as the reference set them, the function equals LAVIS' Q-Former.
    values = deterministic_state_dict({name: list(qformer[name].shape) for name in new})
    with torch.no_grad():
        for name in new:
            connector.qformer.get_parameter(name).copy_(values[name])
        connector.query_tokens.copy_(deterministic_state_dict({"query_tokens": [1, 4, 16]})["query_tokens"])
        features = torch.randn(2, 7, reference["vision_width"], generator=torch.Generator().manual_seed(0))
        query_embeds = connector.query_tokens.expand(2, -1, -1)
        output = connector.eval().qformer(query_embeds=query_embeds, encoder_hidden_states=features).last_hidden_state
    torch.testing.assert_close(output, torch.tensor(reference["last_hidden_state"]), rtol=0, atol=TOLERANCE)


def test_qformer_rejects_a_bert_checkpoint_with_missing_or_unexpected_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    reference = fixture("qformer_bert_reference.json")
    folder = save_tiny_bert(tmp_path / "bert", reference)
    weights = load_file(folder / "model.safetensors")
    del weights["bert.encoder.layer.1.output.dense.weight"]
    weights["bert.encoder.layer.0.attention.self.extra.weight"] = torch.zeros(2)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError) as error:
        qformer_connector(reference, folder).load_bert_weights()
    assert "missing keys: ['encoder.layer.1.output.dense.weight']" in str(error.value)
    assert "unexpected keys: ['bert.encoder.layer.0.attention.self.extra.weight']" in str(error.value)

    wrong_shape = qformer_connector(
        {**reference, "bert_config": {**reference["bert_config"], "num_hidden_layers": 2}}, folder
    )
    with pytest.raises(ValueError, match="num_hidden_layers: 3 in .*, 2 in qformer_config"):
        wrong_shape.load_bert_weights()


# --- the paper's audio and point-cloud experts in a MERA model ------------------------------------------------------
FRESH_PROCESS_LOAD = (
    REFUSE_PROJECT_IMPORTS
    + """
import sys, torch
from transformers import AutoModel
folder = sys.argv[1]
inputs = torch.load(sys.argv[2])
expected = torch.load(sys.argv[3])
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert type(model.encoders["audio"]).__name__ == "BeatsModel", type(model.encoders["audio"])
with torch.no_grad():
    logits = model(**inputs).logits
diff = (logits - expected).abs().max().item()
print("max logit difference", diff)
assert diff < 1e-5
"""
)


def test_four_modality_model_with_the_papers_audio_and_point_cloud_experts(tmp_path):
    beats_file = save_beats_checkpoint(tmp_path)
    point_bert_file = save_point_bert_checkpoint(tmp_path)
    reference = fixture("qformer_bert_reference.json")
    bert_folder = save_tiny_bert(tmp_path / "bert", reference)
    model = build_tiny_model(("image", "video"))
    model.add_modality(
        "point_cloud",
        encoder_weights=str(point_bert_file),
        encoder_config=point_bert_config(fixture("point_bert_reference.json")),
        num_points=64,
    )
    bert = reference["bert_config"]
    connector = {
        "type": "qformer",
        "num_query_tokens": 4,
        "qformer_config": {
            k: bert[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        },
        "init_from": str(bert_folder),
    }
    waveform_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False, return_attention_mask=False
    )
    spec = ModalitySpec(
        "audio",
        encoder_weights=str(beats_file),
        connector=connector,
        feature_processor=waveform_extractor,
        options={"max_audio_seconds": 0.5},
    )
    phase = {"warmup_steps": 0, "disable_tqdm": True}
    settings = StageSettings(
        **{
            f"{name}_{field}": value
            for name in ("pretrain", "finetune", "realign")
            for field, value in (("per_device_train_batch_size", 4), ("num_train_epochs", 1))
        },
        pretrain_learning_rate=1e-2,
        finetune_learning_rate=5e-3,
        finetune_connector_learning_rate=1e-3,
        realign_learning_rate=1e-3,
        pretrain_args=phase,
        finetune_args=phase,
        realign_args=phase,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        replay_ratio=25,
        seed=0,
    )
    audio_data = load_samples(toy_samples(tmp_path / "data", "audio", 4))
    encoder_before = {k: v.clone() for k, v in BeatsModel.from_official_checkpoint(beats_file).state_dict().items()}
    output = run_stage(model, tiny_processor(model), spec, audio_data, tmp_path / "stage-4", settings=settings)

    stage = MeraForCausalLM.from_pretrained(output).eval()
    assert stage.modalities == ["image", "video", "point_cloud", "audio"]
    assert stage.config.modality("audio").num_tokens == 4
    # The frozen BEATs is the released one, bit for bit, after a whole stage of training.
    assert all(torch.equal(v, encoder_before[k]) for k, v in stage.encoders["audio"].state_dict().items())
    # The code files travel with the checkpoint, BEATs' own included.
    assert {"beats.py", "key_mapping.py", "encoders.py", "connectors.py"} <= {p.name for p in output.glob("*.py")}

    from modeling_mera import MeraProcessor

    processor = MeraProcessor.from_pretrained(output)
    rng = np.random.default_rng(0)
    batch = processor(
        ["<image> what", "<video> what", "<audio> describe the audio .", "<point_cloud> which shape is it ?"],
        media=[
            {"image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)},
            {"video": rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)},
            {"audio": 0.3 * np.sin(np.arange(7000) / 5.0)},
            {"point_cloud": rng.standard_normal((100, 3))},
        ],
    )
    assert batch["modality_inputs"]["audio"].shape == (1, 8000)  # raw 16 kHz waveforms: BEATs makes its own fbank
    with torch.no_grad():
        logits = stage(**batch).logits
    torch.save({**batch.data}, tmp_path / "inputs.pt")
    torch.save(logits, tmp_path / "logits.pt")
    shutil.rmtree(bert_folder)  # a saved model carries its Q-Former: init_from is not read again
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent(FRESH_PROCESS_LOAD))
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, str(script), str(output), str(tmp_path / "inputs.pt"), str(tmp_path / "logits.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max logit difference" in result.stdout, result.stdout


def test_point_bert_reads_pointllm_v1_2_layout(tmp_path):
    # PointLLM's point_bert_v1.2.pt (ULIP-2): the same module names under module.point_encoder., beside other towers.
    # The reference is still the original Point-BERT's output: PointLLM's PointTransformer is the same network.
    reference = fixture("point_bert_reference.json")
    base_model = official_point_bert_checkpoint(reference)["base_model"]
    encoder = {k.replace("module.transformer_q.", "module.point_encoder."): v for k, v in base_model.items()}
    state_dict = {k: v for k, v in encoder.items() if k.startswith("module.point_encoder.")}
    state_dict["module.open_clip_model.positional_embedding"] = torch.zeros(3)
    torch.save({"state_dict": state_dict, "epoch": 1}, tmp_path / "point_bert_v1.2.pt")
    model = PointBertModel.from_official_checkpoint(tmp_path / "point_bert_v1.2.pt", point_bert_config(reference))
    with torch.no_grad():
        features = model(point_bert_inputs()).last_hidden_state
    torch.testing.assert_close(features, torch.tensor(reference["features"]), rtol=0, atol=TOLERANCE)


# --- which checkpoints a run needs ------------------------------------------------------------------------------
def test_required_checkpoints_of_the_paper_config_locate_files_folders_and_hub_ids(tmp_path, monkeypatch):
    import yaml

    from trainers.pretrained import format_checkpoints, missing_checkpoints, required_checkpoints

    config = yaml.safe_load((Path(__file__).parents[1] / "recipes/configs/paper_sequential.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # an empty cache
    entries = required_checkpoints(config["language_model"], config["modalities"])
    by_role = {(entry["modality"], entry["role"]): entry for entry in entries}
    beats, point_bert = by_role["audio", "encoder"], by_role["point_cloud", "encoder"]
    assert beats["kind"] == point_bert["kind"] == "file"
    assert beats["path"] == str(tmp_path / "checkpoints" / "BEATs_iter3_plus_AS2M.pt") and not beats["exists"]
    assert by_role["audio", "connector init_from"] == {
        "modality": "audio",
        "role": "connector init_from",
        "reference": "bert-base-uncased",
        "kind": "hub",
        "repo_id": "bert-base-uncased",
        "cached": False,
    }
    assert by_role["-", "language model"]["kind"] == by_role["image", "encoder"]["kind"] == "hub"
    assert [entry["path"] for entry in missing_checkpoints(entries)] == [beats["path"], point_bert["path"]]
    text = format_checkpoints(entries)
    assert f"audio encoder: file {beats['path']} (MISSING)" in text
    assert "missing checkpoint(s): BEATs_iter3_plus_AS2M.pt, point_bert_v1.2.pt; see docs/encoders.md" in text

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "BEATs_iter3_plus_AS2M.pt").write_bytes(b"x")
    (tmp_path / "checkpoints" / "point_bert_v1.2.pt").write_bytes(b"x")
    (tmp_path / "bert-base-uncased").mkdir()  # a local folder wins over the Hub id of the same name
    entries = required_checkpoints(config["language_model"], config["modalities"])
    assert missing_checkpoints(entries) == []
    assert {entry["kind"] for entry in entries if entry["role"] == "connector init_from"} == {"folder"}
    assert "missing checkpoint" not in format_checkpoints(entries)


def test_dry_run_lists_the_checkpoints_and_a_missing_one_stops_dry_and_real_runs(tmp_path):
    import yaml

    from trainers.continual import run_continual
    from trainers.errors import UserError
    from trainers.settings import ContinualConfig

    config = yaml.safe_load(write_tiny_run(tmp_path, modalities=("audio",), samples_per_modality=2).read_text())
    beats_file, bert_folder = tmp_path / "checkpoints" / "BEATs_iter3_plus_AS2M.pt", tmp_path / "bert"
    audio = config["modalities"][0]
    del audio["encoder_config"]
    audio.update(encoder_weights=str(beats_file), connector={**QFORMER, "init_from": str(bert_folder)})
    config_file = tmp_path / "paper_like.yaml"
    config_file.write_text(yaml.safe_dump(config))
    command = [sys.executable, str(Path(__file__).parents[1] / "recipes" / "continual.py")]
    command += ["--config", str(config_file), "--dry_run"]
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}

    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "BAD" not in result.stdout and "media file(s) missing" not in result.stdout  # only the checkpoints
    assert f"SETTING modalities ('audio').encoder_weights: file {beats_file} not found" in result.stdout
    assert f"SETTING modalities ('audio').connector.init_from: folder {bert_folder} not found" in result.stdout
    assert f"audio encoder: file {beats_file} (MISSING)" in result.stdout
    assert f"audio connector init_from: folder {bert_folder} (MISSING)" in result.stdout
    assert f"language model: folder {tmp_path / 'lm'} (found)" in result.stdout
    assert "missing checkpoint(s): BEATs_iter3_plus_AS2M.pt, bert; see docs/encoders.md" in result.stdout
    # A real run stops before its first stage, not when it reaches the audio stage.
    with pytest.raises(UserError, match="the run was not started, nothing was written") as raised:
        run_continual(ContinualConfig(**config))
    assert f"encoder_weights: file {beats_file} not found" in str(raised.value)
    assert f"connector.init_from: folder {bert_folder} not found" in str(raised.value)
    assert not (tmp_path / "run" / "stage-1").exists()

    beats_file.parent.mkdir()
    beats_file.write_bytes(b"checked for presence only")
    bert_folder.mkdir()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"audio encoder: file {beats_file} (found)" in result.stdout and "missing checkpoint" not in result.stdout
