"""
MeraProcessor as a transformers processor: chat messages with modality content parts, the standard processor files,
the Auto classes, and a saved stage used with transformers alone (AutoProcessor, generate, pipeline, the README).
"""

import builtins
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REFUSE_PROJECT_IMPORTS, build_tiny_model, tiny_clip_config, tiny_processor, tiny_tokenizer
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
)

from modeling_mera import MeraConfig, MeraForCausalLM, MeraProcessor

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
PICTURE = RNG.integers(0, 255, (32, 32, 3), dtype=np.uint8)
WAVE = RNG.standard_normal(16000).astype(np.float32)


def chat(*parts, text="what is in the image ?"):
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def assert_same_batch(first, second):
    assert first.keys() == second.keys()
    torch.testing.assert_close(first["input_ids"], second["input_ids"], rtol=0, atol=0)
    torch.testing.assert_close(first["attention_mask"], second["attention_mask"], rtol=0, atol=0)
    assert first["modality_inputs"].keys() == second["modality_inputs"].keys()
    for name, inputs in first["modality_inputs"].items():
        torch.testing.assert_close(inputs, second["modality_inputs"][name], rtol=0, atol=0)


def test_chat_messages_build_the_same_inputs_as_text_prompts():
    model = build_tiny_model(("image", "audio", "video", "point_cloud"))
    processor = tiny_processor(model)
    clip = RNG.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    cloud = RNG.standard_normal((100, 3))
    messages = chat(
        {"type": "image", "image": PICTURE},
        {"type": "video", "video": clip},
        {"type": "audio", "audio": WAVE},
        {"type": "point_cloud", "point_cloud": cloud},
    )
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "<image>\n<video>\n<audio>\n<point_cloud>\nwhat is in the image ?"
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    media = {"image": PICTURE, "video": clip, "audio": WAVE, "point_cloud": cloud}
    assert_same_batch(inputs, processor(prompt, media=media))
    ids = inputs["input_ids"]
    counts = {name: int((ids == token).sum()) for name, token in model.config.placeholder_token_ids.items()}
    assert counts == {"image": 16, "video": 8, "audio": 4, "point_cloud": 9}
    assert torch.isfinite(model(**inputs).logits).all()
    # transformers' keywords for the same prompt give the same inputs too.
    keywords = processor(text=prompt, images=[PICTURE], videos=[clip], audio=[WAVE], point_clouds=[cloud])
    assert_same_batch(keywords, inputs)


def test_chat_template_renders_any_number_of_turns_and_batches():
    model = build_tiny_model(("image", "audio"))
    processor = tiny_processor(model)
    conversation = [
        {"role": "user", "content": [{"type": "image", "image": PICTURE}, {"type": "text", "text": "what color ?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "text", "text": "and the sound ?"}, {"type": "audio", "audio": WAVE}]},
    ]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert text == "<image>\nwhat color ? red</s>and the sound ?\n<audio>"
    second = chat({"type": "audio", "audio": WAVE}, text="how is the tone ?")
    processor.tokenizer.padding_side = "left"
    batch = processor.apply_chat_template([conversation, second], tokenize=True, return_dict=True)
    expected = processor(
        [text, "<audio>\nhow is the tone ?"], media=[{"image": PICTURE, "audio": WAVE}, {"audio": WAVE}]
    )
    assert_same_batch(batch, expected)
    assert batch["attention_mask"][1, 0] == 0, "left padding, as the tokenizer asks"
    # A finished turn can be continued: the prompt then ends with the assistant's text, not with EOS.
    prefill = processor.apply_chat_template(conversation[:2], continue_final_message=True)
    assert prefill == "<image>\nwhat color ? red"


def test_content_types_name_a_modality_by_kind_or_by_name(tmp_path):
    model = build_tiny_model(())
    for name in ("photo", "xray"):
        model.add_modality(name, kind="image", encoder_config=tiny_clip_config(), feature_select_strategy="default")
    processor = tiny_processor(model)
    with pytest.raises(ValueError, match=r"type 'image' matches 2 modalities .*use a modality name"):
        processor.apply_chat_template(chat({"type": "image", "image": PICTURE}), tokenize=True, return_dict=True)
    Image.fromarray(PICTURE).save(tmp_path / "scan.png")
    messages = chat({"type": "xray", "path": str(tmp_path / "scan.png")}, {"type": "photo", "photo": PICTURE})
    inputs = processor.apply_chat_template(messages, tokenize=True, return_dict=True)
    media = {"xray": Image.fromarray(PICTURE), "photo": PICTURE}
    assert_same_batch(inputs, processor("<xray>\n<photo>\nwhat is in the image ?", media=media))
    with pytest.raises(ValueError, match="holds no item"):
        processor.apply_chat_template(chat({"type": "xray"}), tokenize=True, return_dict=True)
    single = tiny_processor(build_tiny_model(("image",)))
    with pytest.raises(ValueError, match=r"1 <image> placeholder\(s\) but 2 images"):
        single(text="<image> what ?", images=[PICTURE, PICTURE])


def test_processor_files_are_standard_and_round_trip_through_auto_processor(tmp_path):
    model = build_tiny_model(("image", "audio"))
    processor = tiny_processor(model)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "MeraProcessor"
    assert saved["auto_map"] == {"AutoProcessor": "processing_mera.MeraProcessor"}
    assert sorted(saved["modality_processors"]) == ["audio", "image"]
    assert saved["modality_processors"]["audio"]["feature_extractor_type"] == "WhisperFeatureExtractor"
    assert (tmp_path / "processing_mera.py").read_text() == (ROOT / "modeling_mera" / "processing_mera.py").read_text()
    assert (tmp_path / "chat_template.jinja").read_text() == processor.chat_template
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is MeraProcessor and reloaded.chat_template == processor.chat_template
    messages = chat({"type": "image", "image": PICTURE}, {"type": "audio", "audio": WAVE})
    assert_same_batch(
        reloaded.apply_chat_template(messages, tokenize=True, return_dict=True),
        processor.apply_chat_template(messages, tokenize=True, return_dict=True),
    )


def test_auto_classes_know_mera_once_the_package_is_imported(tmp_path, monkeypatch):
    model = build_tiny_model(("image",))
    model.save_pretrained(tmp_path)
    tiny_processor(model).save_pretrained(tmp_path)

    def no_prompt(*args):
        raise AssertionError(f"asked: {args}")

    monkeypatch.setattr(builtins, "input", no_prompt)
    assert type(AutoConfig.from_pretrained(tmp_path)) is MeraConfig
    for auto_class in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
        assert type(auto_class.from_pretrained(tmp_path)) is MeraForCausalLM
    assert type(AutoProcessor.from_pretrained(tmp_path)) is MeraProcessor
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer("what color ?")["input_ids"] == tiny_tokenizer()("what color ?")["input_ids"]


STAGE_WITH_TRANSFORMERS_ALONE = (
    REFUSE_PROJECT_IMPORTS
    + """
import json, sys
import numpy as np, torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer, pipeline
stage = sys.argv[1]
media = np.load(stage + "/media.npz")
model = AutoModelForCausalLM.from_pretrained(stage, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(stage, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(stage, trust_remote_code=True)
messages = [{"role": "user", "content": [
    {"type": "image", "image": Image.fromarray(media["image"])},
    {"type": "audio", "audio": media["audio"]},
    {"type": "text", "text": "what is in the image ?"},
]}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt")
length = inputs["input_ids"].shape[1]
results = {"classes": [type(model).__module__, type(processor).__module__, type(tokenizer).__name__],
           "input_ids": inputs["input_ids"].tolist()}
beams = model.generate(**inputs, num_beams=2, max_new_tokens=6, min_new_tokens=6)
results["beams"] = processor.batch_decode(beams[:, length:], skip_special_tokens=True)
torch.manual_seed(0)
sampled = model.generate(**inputs, do_sample=True, num_return_sequences=2, max_new_tokens=6, min_new_tokens=6)
results["sampled"] = processor.batch_decode(sampled[:, length:], skip_special_tokens=True)
answerer = pipeline("image-text-to-text", model=stage, trust_remote_code=True)
question = [{"role": "user", "content": [{"type": "image", "image": Image.fromarray(media["image"])},
                                         {"type": "text", "text": "what color is it ?"}]}]
answer = answerer(text=question, generate_kwargs={"max_new_tokens": 4, "min_new_tokens": 4})
results["pipeline"] = answer[0]["generated_text"][-1]["content"]
print(json.dumps(results))
"""
)


def fresh_env(tmp_path, **extra) -> dict:
    """A process that cannot import the project, with its own modules cache, and no terminal to answer prompts."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.update({"HF_MODULES_CACHE": str(tmp_path / "modules"), "TOKENIZERS_PARALLELISM": "false", **extra})
    return env


def test_saved_stage_works_with_transformers_alone(tmp_path):
    model = build_tiny_model(("image", "audio"))
    stage = tmp_path / "stage"
    model.save_pretrained(stage)
    tiny_processor(model).save_pretrained(stage)
    np.savez(stage / "media.npz", image=PICTURE, audio=WAVE)
    script = tmp_path / "use_stage.py"
    script.write_text(textwrap.dedent(STAGE_WITH_TRANSFORMERS_ALONE))
    result = subprocess.run(
        [sys.executable, str(script), str(stage)], cwd=tmp_path, env=fresh_env(tmp_path), capture_output=True,
        text=True, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    model_module, processor_module, tokenizer_class = loaded["classes"]
    assert model_module.startswith("transformers_modules") and processor_module.startswith("transformers_modules")
    assert tokenizer_class == "TokenizersBackend"

    # The project's own path: a text prompt with placeholders, the same model.
    processor = MeraProcessor.from_pretrained(stage)
    inputs = processor("<image>\n<audio>\nwhat is in the image ?", media={"image": PICTURE, "audio": WAVE})
    assert inputs["input_ids"].tolist() == loaded["input_ids"]
    length = inputs["input_ids"].shape[1]
    beams = model.generate(**inputs, num_beams=2, max_new_tokens=6, min_new_tokens=6)
    assert processor.batch_decode(beams[:, length:], skip_special_tokens=True) == loaded["beams"]
    torch.manual_seed(0)
    sampled = model.generate(**inputs, do_sample=True, num_return_sequences=2, max_new_tokens=6, min_new_tokens=6)
    assert len(loaded["sampled"]) == 2 and all(len(text.split()) >= 3 for text in loaded["sampled"])
    assert processor.batch_decode(sampled[:, length:], skip_special_tokens=True) == loaded["sampled"]
    question = processor("<image>\nwhat color is it ?", media={"image": PICTURE})
    answer = model.generate(**question, max_new_tokens=4, min_new_tokens=4)
    expected = processor.batch_decode(answer[:, question["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    assert loaded["pipeline"].strip() == expected.strip() != ""


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use a shared stage") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_snippet_loads_a_stage_by_repo_id_and_revision_and_answers(tmp_path, monkeypatch):
    """The README's code, verbatim, against the local Hub stand-in serving a tiny stage as org/mera-4mod@stage-4."""
    from huggingface_hub import HfApi, constants
    from local_hub import LocalHub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the local hub speaks the plain LFS protocol
    snippet = readme_snippet()
    assert 'repo, revision = "org/mera-4mod", "stage-4"' in snippet
    model = build_tiny_model(("image", "audio"))
    stage = tmp_path / "stage"
    model.save_pretrained(stage)
    tiny_processor(model).save_pretrained(stage)
    Image.fromarray(PICTURE).save(tmp_path / "photo.jpg")
    with LocalHub() as hub:
        api = HfApi(endpoint=hub.url, token="hf_local_write_token")
        api.create_repo("org/mera-4mod")
        api.create_branch("org/mera-4mod", branch="stage-4")
        api.upload_folder(repo_id="org/mera-4mod", folder_path=stage, revision="stage-4")
        env = fresh_env(tmp_path, HF_ENDPOINT=hub.url, HF_TOKEN="hf_local_write_token", HF_HUB_OFFLINE="0")
        env.update({"HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf_home")})
        script = tmp_path / "readme.py"
        script.write_text(REFUSE_PROJECT_IMPORTS + snippet)
        result = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=300,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.strip().splitlines()[-1]
    # The same answer as the project's own processor and model on that picture and sound.
    processor = MeraProcessor.from_pretrained(stage)
    sound = (0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000), 16000)
    with Image.open(tmp_path / "photo.jpg") as picture:
        inputs = processor(
            "<image>\n<audio>\nWhat do you see and hear?", media={"image": picture.convert("RGB"), "audio": sound}
        )
    output = model.generate(**inputs, max_new_tokens=30)
    expected = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    assert printed == expected != "", result.stdout


def test_an_instruction_tuned_llms_chat_template_wraps_text_prompts_and_chat_messages_alike():
    model = build_tiny_model(("image",))
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = (
        "{{ bos_token }}{% for message in messages %}{{ message['role'] }} : {{ message['content'] }} . {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )
    processor = MeraProcessor(tokenizer, model.config, {"image": tiny_processor(model).modality_processors["image"]},
                              use_chat_template=True)  # fmt: skip
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\nwhat color ?"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<s>user : <image>\nwhat color ? . assistant :"
    before, after = rendered.split("<image>")
    expected = (
        tokenizer(before, add_special_tokens=False)["input_ids"] + [model.config.placeholder_token_ids["image"]] * 16
    )
    expected += tokenizer(after, add_special_tokens=False)["input_ids"]
    from_text = processor("<image>\nwhat color ?", media={"image": PICTURE})
    assert from_text["input_ids"][0].tolist() == expected  # the template writes the BOS: none is added
    from_chat = processor.apply_chat_template(
        chat({"type": "image", "image": PICTURE}, text="what color ?"), add_generation_prompt=True, tokenize=True,
        return_dict=True,
    )  # fmt: skip
    assert_same_batch(from_chat, from_text)
