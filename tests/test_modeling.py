"""MeraForCausalLM: forward/backward/generate, add_modality, save/load with remote code, and LLaVA equivalence."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import (
    REFUSE_PROJECT_IMPORTS,
    add_tiny_modality,
    build_tiny_model,
    tiny_clip_config,
    tiny_point_bert_config,
    tiny_processor,
    tiny_text_config,
    tiny_tokenizer,
    tiny_whisper_config,
)
from transformers import (
    CLIPConfig,
    CLIPModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    WhisperModel,
)

from modeling_mera import MeraConfig, MeraForCausalLM, PointBertModel
from modeling_mera.encoders import farthest_point_sample, group_points, pool_frame_tokens

RNG = np.random.default_rng(0)


def mixed_batch(processor, with_answers=True, padding_side="right"):
    """An image sample, an audio sample and a text-only sample in one batch."""
    prompts = ["<image> describe the image .", "what sound is in the audio ? <audio>", "describe a red circle ."]
    media = [
        {"image": RNG.integers(0, 255, (40, 48, 3), dtype=np.uint8)},
        {"audio": RNG.standard_normal(12000).astype(np.float32)},
        None,
    ]
    answers = ["a red circle", "a high tone", "a red circle"] if with_answers else None
    return processor(prompts, media=media, answers=answers, padding_side=padding_side)


def test_forward_backward_trains_connectors_and_llm_not_encoders():
    model = build_tiny_model(("image", "audio")).train()
    batch = mixed_batch(tiny_processor(model))
    assert set(batch["modality_inputs"]) == {"image", "audio"}
    output = model(**batch)
    assert output.logits.shape == (*batch["input_ids"].shape, model.config.text_config.vocab_size)
    assert torch.isfinite(output.loss) and output.loss.item() > 0
    output.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert not any(name.startswith("model.encoders.") for name in grads), "encoders are frozen by default"
    for name in ("image", "audio"):
        connector_grads = [g for n, g in grads.items() if n.startswith(f"model.connectors.{name}.")]
        assert connector_grads and all(g is not None and g.abs().sum() > 0 for g in connector_grads[:2])
    assert grads["model.language_model.layers.0.self_attn.q_proj.weight"].abs().sum() > 0


def test_keywords_and_modality_inputs_dict_are_the_same():
    model = build_tiny_model(("image", "audio"))
    batch = mixed_batch(tiny_processor(model))
    modality_inputs = batch.data.pop("modality_inputs")
    by_dict = model(**batch, modality_inputs=modality_inputs).logits
    by_keyword = model(**batch, **modality_inputs).logits
    torch.testing.assert_close(by_dict, by_keyword, rtol=0, atol=0)


def test_features_change_the_output_only_at_and_after_placeholders():
    model = build_tiny_model(("image",))
    processor = tiny_processor(model)
    prompt = "what is in the image ? <image> describe it"
    first = processor(prompt, media={"image": RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)})
    second = processor(prompt, media={"image": RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)})
    logits_1, logits_2 = model(**first).logits, model(**second).logits
    start = int((first["input_ids"][0] == model.config.placeholder_token_ids["image"]).nonzero()[0])
    torch.testing.assert_close(logits_1[:, :start], logits_2[:, :start], rtol=0, atol=0)
    assert (logits_1[:, start:] - logits_2[:, start:]).abs().max() > 1e-4


def test_generate_with_modalities_uses_features_on_the_first_step_only():
    model = build_tiny_model(("image", "audio"))
    batch = mixed_batch(tiny_processor(model), with_answers=False, padding_side="left")
    cached = model.generate(**batch, max_new_tokens=6, do_sample=False)
    uncached = model.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape == (3, batch["input_ids"].shape[1] + 6)
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)
    # The first generated token is the argmax of one plain forward pass.
    next_token = model(**batch).logits[:, -1].argmax(-1)
    torch.testing.assert_close(cached[:, batch["input_ids"].shape[1]], next_token, rtol=0, atol=0)


def test_add_modality_leaves_old_modalities_bit_identical():
    model = build_tiny_model(("image", "audio"))
    batch = mixed_batch(tiny_processor(model))
    before_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    before_logits = model(**batch).logits
    add_tiny_modality(model, "point_cloud")
    assert model.modalities == ["image", "audio", "point_cloud"]
    vocab_size = model.config.text_config.vocab_size
    assert model.config.placeholder_token_ids == {
        "image": vocab_size,
        "audio": vocab_size + 1,
        "point_cloud": vocab_size + 2,
    }
    after_state = model.state_dict()
    for name, tensor in before_state.items():
        assert torch.equal(tensor, after_state[name]), name
    assert any(name.startswith("model.encoders.point_cloud.") for name in after_state)
    torch.testing.assert_close(model(**batch).logits, before_logits, rtol=0, atol=0)
    # ... and the new modality works alongside the old ones.
    processor = tiny_processor(model)
    points = processor("<point_cloud> shape ?", media={"point_cloud": RNG.standard_normal((200, 3))}, answers="cube")
    assert torch.isfinite(model(**points).loss)


def test_save_and_from_pretrained_round_trip_after_each_add_modality(tmp_path):
    model = build_tiny_model(())
    for step, name in enumerate(("image", "audio", "video", "point_cloud")):
        add_tiny_modality(model, name)
        model.save_pretrained(tmp_path / str(step))
        loaded = MeraForCausalLM.from_pretrained(tmp_path / str(step)).eval()
        assert loaded.config.modalities == model.config.modalities
        for key, tensor in model.state_dict().items():
            assert torch.equal(tensor, loaded.state_dict()[key]), key
    config = json.loads((tmp_path / "3" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_mera.MeraForCausalLM"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_mera.MeraForCausalLM"
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_mera.MeraForCausalLM"
    assert config["auto_map"]["AutoConfig"] == "configuration_mera.MeraConfig"
    copied = {path.name for path in (tmp_path / "3").glob("*.py")}
    assert {"modeling_mera.py", "configuration_mera.py", "encoders.py", "connectors.py"} <= copied


FRESH_PROCESS_LOAD = (
    REFUSE_PROJECT_IMPORTS
    + """
import sys, torch
from transformers import AutoModel, AutoModelForCausalLM
folder = sys.argv[1]
inputs = torch.load(folder + "/inputs.pt")
expected = torch.load(folder + "/logits.pt")
for auto_class in (AutoModel, AutoModelForCausalLM):
    model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        logits = model(**inputs).logits
    diff = (logits - expected).abs().max().item()
    print(auto_class.__name__, type(model).__name__, diff)
    assert diff < 1e-5
"""
)


def test_fresh_process_loads_with_auto_classes_and_remote_code(tmp_path):
    model = build_tiny_model(("image", "audio", "point_cloud"))
    processor = tiny_processor(model)
    batch = mixed_batch(processor)
    points = processor(["<point_cloud> shape ?"], media=[{"point_cloud": RNG.standard_normal((100, 3))}])
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    with torch.no_grad():
        torch.save(model(**batch).logits, folder / "logits.pt")
    torch.save({**batch.data}, folder / "inputs.pt")
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent(FRESH_PROCESS_LOAD))
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, str(script), str(folder)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AutoModel MeraForCausalLM" in result.stdout and "AutoModelForCausalLM MeraForCausalLM" in result.stdout
    assert points["modality_inputs"]["point_cloud"].shape == (1, 64, 3)


def test_image_forward_equals_transformers_llava():
    model = build_tiny_model(("image",))
    vocab_size = model.config.text_config.vocab_size
    llava_image_token = vocab_size - 1  # LLaVA needs an in-vocabulary image token id; MERA's lies outside
    llava = LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=tiny_clip_config(),
            text_config=tiny_text_config(vocab_size),
            image_token_index=llava_image_token,
            image_seq_length=16,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            projector_hidden_act="gelu",
        )
    ).eval()
    connector = model.connectors["image"]
    llava.model.vision_tower.load_state_dict(model.encoders["image"].state_dict())
    llava.model.multi_modal_projector.linear_1.load_state_dict(connector.layers[0].state_dict())
    llava.model.multi_modal_projector.linear_2.load_state_dict(connector.layers[1].state_dict())
    llava.model.language_model.load_state_dict(model.language_model.state_dict())
    llava.lm_head.load_state_dict(model.lm_head.state_dict())

    processor = tiny_processor(model)
    images = [RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    batch = processor(
        ["<image> describe the image .", "what color is it ? <image>"],
        media=[{"image": images[0]}, {"image": images[1]}],
    )
    llava_ids = batch["input_ids"].masked_fill(
        batch["input_ids"] == model.config.placeholder_token_ids["image"], llava_image_token
    )
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = llava(
            input_ids=llava_ids, attention_mask=batch["attention_mask"], pixel_values=batch["modality_inputs"]["image"]
        ).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_processor_and_model_agree_on_token_counts(tmp_path):
    model = build_tiny_model(("image", "audio", "video", "point_cloud"))
    processor = tiny_processor(model)
    media = {
        "image": RNG.integers(0, 255, (20, 30, 3), dtype=np.uint8),
        "audio": (RNG.standard_normal(44100).astype(np.float32), 44100),  # resampled to 16 kHz
        "video": RNG.integers(0, 255, (7, 32, 32, 3), dtype=np.uint8),
        "point_cloud": RNG.standard_normal((30, 3)),  # fewer points than the encoder samples
    }
    for name, item in media.items():
        placeholder = model.config.modalities[name]["placeholder"]
        batch = processor(f"describe {placeholder}", media={name: item})
        features = model.get_modality_features(name, batch["modality_inputs"][name])
        num_placeholders = int((batch["input_ids"] == model.config.placeholder_token_ids[name]).sum())
        assert num_placeholders == features.shape[1] == processor.num_tokens(name) == model.count_feature_tokens(name)
    assert {n: model.config.modalities[n]["num_tokens"] for n in media} == {
        "image": 16,  # (32 / 8)^2 patches, CLS dropped
        "audio": 4,  # Q-Former query tokens
        "video": 8,  # 2 frames x (4x4 grid pooled 2x -> 2x2)
        "point_cloud": 9,  # 8 groups + CLS
    }
    processor.save_pretrained(tmp_path)
    reloaded = type(processor).from_pretrained(tmp_path)
    again = reloaded("describe <video>", media={"video": media["video"]})
    first = processor("describe <video>", media={"video": media["video"]})
    torch.testing.assert_close(again["input_ids"], first["input_ids"], rtol=0, atol=0)
    torch.testing.assert_close(again["modality_inputs"]["video"], first["modality_inputs"]["video"], rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors():
    model = build_tiny_model(("image", "audio"))
    processor = tiny_processor(model)
    image = RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    batch = processor("<image> describe", media={"image": image})
    pixel_values = batch["modality_inputs"]["image"]
    with pytest.raises(ValueError, match="Image features and image tokens do not match, tokens: 16, features: 32"):
        model(input_ids=batch["input_ids"], image=torch.cat([pixel_values, pixel_values]))
    with pytest.raises(ValueError, match=r"unknown modalities \['smell'\]"):
        model(input_ids=batch["input_ids"], modality_inputs={"image": pixel_values, "smell": pixel_values})
    with pytest.raises(ValueError, match="contain 16 image placeholder tokens .* but no image inputs"):
        model(input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match=r"image inputs must have shape \(items, 3, 32, 32\)"):
        model(input_ids=batch["input_ids"], image=torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"audio inputs must have shape \(items, 16, 40\)"):
        model(input_ids=batch["input_ids"], image=pixel_values, audio=torch.zeros(1, 16, 30))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(image=pixel_values)
    with pytest.raises(ValueError, match=r"1 <image> placeholder\(s\) but 2 image input\(s\)"):
        processor("<image> describe", media={"image": [image, image]})
    with pytest.raises(ValueError, match=r"0 <audio> placeholder\(s\) but 1 audio input"):
        processor("describe the sound", media={"audio": np.zeros(100)})
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        processor("describe", media={"smell": 1})
    with pytest.raises(ValueError, match="already exists"):
        model.add_modality("image", encoder_config=tiny_clip_config())
    with pytest.raises(ValueError, match="unknown fields"):
        MeraConfig(text_config=tiny_text_config(10), modalities={"image": {"kind": "image", "encoder": {}}})
    with pytest.raises(ValueError, match="modality kind must be one of"):
        model.add_modality("smell", kind="smell", encoder_config=tiny_clip_config())
    assert model.modalities == ["image", "audio"], "a failed add_modality leaves nothing behind"


def test_load_pretrained_encoders_from_local_checkpoints(tmp_path):
    clip = CLIPModel(
        CLIPConfig(
            vision_config=tiny_clip_config().to_dict(),
            text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4},
            projection_dim=16,
        )
    )
    clip.save_pretrained(tmp_path / "clip")
    whisper = WhisperModel(tiny_whisper_config())
    whisper.save_pretrained(tmp_path / "whisper")
    point_bert = PointBertModel(tiny_point_bert_config())
    point_bert.save_pretrained(tmp_path / "point_bert")

    model = build_tiny_model(())
    model.add_modality("image", encoder_weights=str(tmp_path / "clip"), feature_select_strategy="default")
    model.add_modality("audio", encoder_weights=str(tmp_path / "whisper"), max_audio_seconds=1.0)
    model.add_modality("point_cloud", encoder_weights=str(tmp_path / "point_bert"), num_points=64)
    expected = {
        "image": clip.vision_model.state_dict(),
        "audio": whisper.encoder.state_dict(),
        "point_cloud": point_bert.state_dict(),
    }
    for name, state in expected.items():
        loaded = model.encoders[name].state_dict()
        loaded = {key.removeprefix("vision_model."): value for key, value in loaded.items()}
        for key, tensor in state.items():
            assert torch.equal(loaded[key], tensor), f"{name}: {key}"
        assert not any(p.requires_grad for p in model.encoders[name].parameters())
    assert model.config.modality("image").encoder.model_type == "clip_vision_model"


def test_video_pooling_is_2x2_averaging_of_the_token_grid():
    frames = torch.randn(3, 16, 5)  # 3 frames, 4x4 grid, 5 channels
    pooled = pool_frame_tokens(frames, 2)
    grid = frames.transpose(1, 2).reshape(3, 5, 4, 4)
    expected = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="square grid"):
        pool_frame_tokens(torch.randn(1, 17, 5), 2)


def test_point_grouping_uses_farthest_points_and_nearest_neighbours():
    torch.manual_seed(0)
    points = torch.rand(2, 100, 3)
    indices = farthest_point_sample(points, 10)
    assert (indices[:, 0] == 0).all() and all(len(set(row.tolist())) == 10 for row in indices)
    # The second centre is the point farthest from the first.
    farthest = ((points - points[:, :1]) ** 2).sum(-1).argmax(-1)
    assert torch.equal(indices[:, 1], farthest)
    patches, centres = group_points(points, 10, 6)
    assert patches.shape == (2, 10, 6, 3) and centres.shape == (2, 10, 3)
    # Each patch holds its centre (offset 0) and its neighbours are the 6 closest points.
    assert torch.allclose(patches.norm(dim=-1).min(dim=-1).values, torch.zeros(2, 10))
    radius = patches.norm(dim=-1).max(dim=-1).values
    distances = torch.cdist(centres, points)
    assert torch.allclose(radius, distances.sort(dim=-1).values[..., 5])


def test_tokenizer_vocabulary_is_untouched():
    model = build_tiny_model(("image",))
    assert model.get_input_embeddings().weight.shape[0] == len(tiny_tokenizer())
    assert min(model.config.placeholder_token_ids.values()) >= model.config.text_config.vocab_size
