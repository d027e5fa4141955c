"""
MeraForCausalLM keeps transformers' modeling and generation contracts, point by point as
`LlavaForConditionalGeneration` keeps them: beams and returned sequences, assisted decoding, the generation signature
(cache, inputs_embeds), `return_dict=False`, `shift_labels`, `attn_implementation`, the tensor-parallel plan, weight
initialisation and vocabulary resizing.
"""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny_model, tiny_processor, tiny_text_config, tiny_tokenizer
from safetensors.torch import load_file, save_file
from transformers.models.whisper.modeling_whisper import sinusoids

from modeling_mera import MeraConfig, MeraForCausalLM

RNG = np.random.default_rng(0)


def generation_batch(processor, two_images=False):
    """Left-padded prompts: an image sample, an audio sample and a text-only one (optionally a two-image sample)."""
    prompts = ["<image> describe the image .", "what sound is in the audio ? <audio>", "describe a red circle ."]
    media = [
        {"image": RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)},
        {"audio": RNG.standard_normal(16000).astype(np.float32)},
        None,
    ]
    if two_images:
        prompts.append("<image> and <image> : which is red ?")
        media.append({"image": [RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(2)]})
    return processor(prompts, media=media, padding_side="left")


def embeds_of(model, batch):
    with torch.no_grad():
        return model.model.embed_inputs(batch["input_ids"], batch["modality_inputs"])


def test_beams_and_returned_sequences_expand_each_prompts_modality_inputs():
    model = build_tiny_model(("image", "audio"))
    batch = generation_batch(tiny_processor(model), two_images=True)
    length = batch["input_ids"].shape[1]
    inputs_embeds = embeds_of(model, batch)
    # Reference: the same prompts as embeddings, which transformers expands row by row itself.
    for options in ({"num_beams": 2, "num_return_sequences": 2}, {"num_beams": 3}):
        ours = model.generate(**batch, max_new_tokens=5, do_sample=False, **options)
        reference = model.generate(
            inputs_embeds=inputs_embeds, attention_mask=batch["attention_mask"], max_new_tokens=5, do_sample=False,
            **options,
        )  # fmt: skip
        assert ours.shape[0] == 4 * options.get("num_return_sequences", 1)
        torch.testing.assert_close(ours[:, length:], reference, rtol=0, atol=0)
    torch.manual_seed(3)
    sampled = model.generate(**batch, max_new_tokens=5, do_sample=True, num_return_sequences=2)
    torch.manual_seed(3)
    reference = model.generate(
        inputs_embeds=inputs_embeds, attention_mask=batch["attention_mask"], max_new_tokens=5, do_sample=True,
        num_return_sequences=2,
    )  # fmt: skip
    torch.testing.assert_close(sampled[:, length:], reference, rtol=0, atol=0)


def test_assisted_decoding_with_modality_inputs_equals_greedy_decoding():
    model = build_tiny_model(("image", "audio"))
    assistant = build_tiny_model(("image", "audio"), seed=1)
    processor = tiny_processor(model)
    sample = processor(
        "<image> what sound is in the audio ? <audio>",
        media={
            "image": RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8),
            "audio": RNG.standard_normal(16000).astype(np.float32),
        },
    )
    greedy = model.generate(**sample, max_new_tokens=8, do_sample=False)
    assisted = model.generate(**sample, max_new_tokens=8, do_sample=False, assistant_model=assistant)
    torch.testing.assert_close(assisted, greedy, rtol=0, atol=0)
    # The model as its own assistant (prompt lookup-free self-speculation) gives the same text too.
    itself = model.generate(**sample, max_new_tokens=8, do_sample=False, assistant_model=model)
    torch.testing.assert_close(itself, greedy, rtol=0, atol=0)


def test_generation_continues_from_a_returned_cache_and_accepts_inputs_embeds():
    model = build_tiny_model(("image", "audio"))
    batch = generation_batch(tiny_processor(model))
    full = model.generate(**batch, max_new_tokens=6, do_sample=False)
    first = model.generate(**batch, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    attention_mask = F.pad(batch["attention_mask"], (0, 3), value=1)
    continued = model.generate(
        input_ids=first.sequences, attention_mask=attention_mask, modality_inputs=batch["modality_inputs"],
        cache=first.cache, max_new_tokens=3, do_sample=False,
    )  # fmt: skip
    torch.testing.assert_close(continued, full, rtol=0, atol=0)
    from_embeds = model.generate(
        inputs_embeds=embeds_of(model, batch), attention_mask=batch["attention_mask"], max_new_tokens=6,
        do_sample=False,
    )  # fmt: skip
    torch.testing.assert_close(from_embeds, full[:, batch["input_ids"].shape[1] :], rtol=0, atol=0)


def test_return_dict_false_gives_the_tuple_of_the_output_fields():
    model = build_tiny_model(("image", "audio"))
    processor = tiny_processor(model)
    image = RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    batch = processor("<image> describe the image .", media={"image": image}, answers="red")
    as_dict = model(**batch)
    as_tuple = model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss, rtol=0, atol=0)
    torch.testing.assert_close(as_tuple[1], as_dict.logits, rtol=0, atol=0)
    backbone = model.model(input_ids=batch["input_ids"], modality_inputs=batch["modality_inputs"], return_dict=False)
    torch.testing.assert_close(backbone[0], model.model(**batch.data).last_hidden_state, rtol=0, atol=0)


def test_loss_uses_shift_labels_when_given():
    model = build_tiny_model(("image",))
    processor = tiny_processor(model)
    batch = processor("<image> what color ?", media={"image": RNG.integers(0, 255, (32, 32, 3))}, answers="red square")
    logits = model(**batch).logits
    # Shifted labels as a sequence-parallel collator makes them: here deliberately unlike `labels` shifted by one.
    shift_labels = torch.full_like(batch["labels"], -100)
    shift_labels[0, -4:] = torch.tensor([5, 6, 7, 8])
    loss = model(**batch, shift_labels=shift_labels).loss
    expected = F.cross_entropy(logits[0, -4:].float(), shift_labels[0, -4:])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_attn_implementation_reaches_every_encoder(tmp_path):
    model = build_tiny_model(("image", "audio"))
    model.save_pretrained(tmp_path)
    for loaded in (
        MeraForCausalLM.from_pretrained(tmp_path, attn_implementation="eager"),
        MeraForCausalLM(MeraConfig.from_pretrained(tmp_path, attn_implementation="eager")),
    ):
        implementations = {name: encoder.config._attn_implementation for name, encoder in loaded.encoders.items()}
        assert implementations == {"image": "eager", "audio": "eager"}
        assert loaded.language_model.config._attn_implementation == "eager"
    default = MeraForCausalLM.from_pretrained(tmp_path)
    assert {encoder.config._attn_implementation for encoder in default.encoders.values()} == {"sdpa"}
    default.set_attn_implementation("eager")
    assert {encoder.config._attn_implementation for encoder in default.encoders.values()} == {"eager"}


def test_tensor_parallel_plan_shards_the_lm_head_like_the_embedding():
    model = build_tiny_model(("image",))
    plan = model.tp_plan
    assert plan["lm_head"] == "colwise_gather_output"
    assert plan["model.language_model.embed_tokens"] == "embedding_rowwise"
    names = [name for name, _ in model.named_modules()]
    for pattern in plan:  # every rule names real modules
        regex = re.compile(pattern.replace(".", r"\.").replace("*", r"\d+") + "$")
        assert any(regex.match(name) for name in names), pattern


def test_weights_missing_from_a_checkpoint_are_initialised_like_fresh_ones(tmp_path):
    model = build_tiny_model(("image", "audio"))
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    dropped = sorted(key for key in state if key.startswith(("model.connectors.", "model.encoders.audio.")))
    save_file({k: v for k, v in state.items() if k not in dropped}, tmp_path / "model.safetensors", {"format": "pt"})
    loaded = MeraForCausalLM.from_pretrained(tmp_path)
    weights = loaded.state_dict()
    query_tokens = weights["model.connectors.audio.query_tokens"]
    assert 0.01 < query_tokens.std().item() < 0.03, query_tokens.std().item()  # Q-Former initializer_range 0.02
    positions = weights["model.encoders.audio.embed_positions.weight"]
    torch.testing.assert_close(positions, sinusoids(*positions.shape), rtol=0, atol=1e-6)
    for key in dropped:
        tensor = weights[key].float()
        assert torch.isfinite(tensor).all() and tensor.abs().max() < 10, key
        if key.endswith(".bias"):
            assert tensor.abs().max() == 0, key
    # Weights that were in the checkpoint are loaded untouched.
    for key, tensor in state.items():
        if key not in dropped:
            assert torch.equal(weights[key], tensor), key


def test_placeholder_ids_move_above_a_resized_vocabulary(tmp_path):
    model = build_tiny_model(("image", "audio"))
    processor = tiny_processor(model)
    old_vocab = model.config.text_config.vocab_size
    image = RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    before = model(**processor("<image> describe the image .", media={"image": image})).logits
    model.resize_token_embeddings(old_vocab + 10)
    assert model.config.text_config.vocab_size == old_vocab + 10
    assert model.config.placeholder_token_ids == {"image": old_vocab + 10, "audio": old_vocab + 11}
    batch = processor("<image> describe the image .", media={"image": image})  # the processor reads the same config
    assert int((batch["input_ids"] == old_vocab + 10).sum()) == 16
    after = model(**batch).logits
    assert after.shape[-1] == old_vocab + 10
    torch.testing.assert_close(after[..., :old_vocab], before, rtol=0, atol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = MeraForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.placeholder_token_ids == model.config.placeholder_token_ids
    torch.testing.assert_close(reloaded(**batch).logits, after, rtol=0, atol=0)


def test_placeholder_ids_inside_the_vocabulary_are_still_refused():
    with pytest.raises(ValueError, match="lies inside the LLM's vocabulary"):
        MeraConfig(
            text_config=tiny_text_config(len(tiny_tokenizer())),
            modalities={"image": {"kind": "image", "encoder_config": {"model_type": "clip_vision_model"},
                                  "placeholder_token_id": 3}},
        )  # fmt: skip
