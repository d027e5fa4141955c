"""Samples as whole conversations: multi-turn LLaVA rows, text-only rows, converters that keep every row."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_model, tiny_image_processor, tiny_processor, tiny_tokenizer, toy_samples
from test_stage import SPECS, tiny_settings

from modeling_mera import MeraProcessor
from trainers.continual import build_stage_plan, run_continual
from trainers.data import MeraDataCollator, load_samples
from trainers.data.conversations import assistant_spans, encode_conversation, encode_samples, render_conversation
from trainers.data.converters import convert
from trainers.methods import get_method_plugins
from trainers.settings import ContinualConfig, ModalitySpec
from trainers.sft import MeraSFTConfig, MeraSFTTrainer
from trainers.stage import run_stage
from trainers.validation import check_method_fits_plan

THREE_TURNS = [
    {"from": "human", "value": "<image>\nwhat color is it ?"},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": "what shape is it ?"},
    {"from": "gpt", "value": "a square"},
    {"from": "human", "value": "is it small or large ?"},
    {"from": "gpt", "value": "large"},
]
TEXT_ONLY = [{"from": "human", "value": "how many are one and one ?"}, {"from": "gpt", "value": "two"}]


def write_json(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return path


@torch.no_grad()
def mean_loss(model, processor, samples) -> float:
    model.eval()
    return model(**MeraDataCollator(processor)(list(samples))).loss.item()


def test_a_three_turn_llava_row_trains_on_exactly_its_three_answers(tmp_path):
    toy_samples(tmp_path, "image", 1)
    rows = [{"id": "three", "image": "image-0.png", "conversations": THREE_TURNS}]
    samples = load_samples(write_json(tmp_path / "llava.json", rows))
    assert len(samples) == 1 and len(samples[0]["messages"]) == 6
    assert samples[0]["prompt"] == "is it small or large ?" and samples[0]["references"] == ["large"]

    model = build_tiny_model(("image",))
    processor = tiny_processor(model)
    batch = MeraDataCollator(processor)(list(samples))
    tokenizer = processor.tokenizer
    answers = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
               for text in ("red", "a square", "large")]  # fmt: skip
    assert assistant_spans(batch["labels"][0].tolist()) == answers, "the three answers (each with EOS) and only them"
    learnt = batch["labels"][0] != -100
    assert int(learnt.sum()) == sum(map(len, answers))
    # Every learnt position holds the token it labels: the answers sit where the model reads them.
    assert torch.equal(batch["input_ids"][0][learnt], batch["labels"][0][learnt])
    assert int((batch["input_ids"][0] == model.config.placeholder_token_ids["image"]).sum()) == 16

    before = mean_loss(model, processor, samples)
    # The tiny random LLM trained whole: LoRA on it moves the loss slowly (its logits start near uniform).
    args = MeraSFTConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=1, num_train_epochs=20,
                         learning_rate=3e-3, warmup_steps=0, lr_scheduler_type="constant", disable_tqdm=True,
                         trainable=["connector:new", "llm"])  # fmt: skip
    trainer = MeraSFTTrainer(model, args, samples, processor)
    trainer.train()
    after = mean_loss(trainer.model, processor, samples)
    assert after < 0.3 * before, (before, after)  # measured: 4.18 -> 0.42


def test_a_text_only_row_trains_and_is_counted(tmp_path):
    images = toy_samples(tmp_path / "data", "image", 3)
    rows = [{**sample, "media": sample["media"]} for sample in images]
    rows.append({"id": "chat", "conversations": TEXT_ONLY})
    samples = load_samples(rows)
    assert len(samples) == 7 and samples[6]["media"] is None and samples[6]["modality"] is None

    base = build_tiny_model(())
    processor = tiny_processor(base)
    batch = encode_samples(processor, [samples[6]])
    assert batch["modality_inputs"] == {} and assistant_spans(batch["labels"][0].tolist()) == [
        processor.tokenizer("two", add_special_tokens=False)["input_ids"] + [processor.tokenizer.eos_token_id]
    ]
    output = run_stage(base, processor, SPECS["image"], samples, tmp_path / "stage-1", plugins=[],
                       settings=tiny_settings())  # fmt: skip
    info = json.loads((output / "stage.json").read_text())
    assert info["train_samples"] == 7 and info["log"]["finetune"]["samples"] == 7
    # Connector pre-training sees only the samples with media (captions here): the text-only row has none.
    assert info["log"]["pretrain"]["samples"] == 3


def mix665k_style_rows() -> list[dict]:
    """Rows as LLaVA's llava_v1_5_mix665k.json holds them: image rows of several turns, text-only ShareGPT rows."""
    rows = []
    for index in range(12):
        turns = [{"from": "human", "value": "<image>\nwhat color is it ?"}, {"from": "gpt", "value": "red"}]
        turns += [{"from": "human", "value": "and the shape ?"}, {"from": "gpt", "value": "a circle"}] * (index % 3)
        rows.append({"id": f"coco-{index}", "image": f"coco/train2017/{index:04d}.png", "conversations": turns})
    for index in range(5):  # ShareGPT: no image key at all, a "model" field
        rows.append({"id": f"sharegpt-{index}", "model": "", "conversations": TEXT_ONLY * (1 + index % 2)})
    return rows


def test_a_converted_mix665k_style_file_keeps_every_row_and_agrees_with_load_samples(tmp_path):
    root = tmp_path / "llava"
    rows = mix665k_style_rows()
    for row in rows:
        if "image" in row:
            toy_samples(root / "coco" / "train2017", "image", 1)
            (root / "coco" / "train2017" / "image-0.png").rename(root / row["image"])
    write_json(root / "llava_v1_5_mix665k.json", rows)
    manifest = convert("llava", root, tmp_path / "out", output_name="mix", train="llava_v1_5_mix665k.json",
                       test_size=4, progress=False)  # fmt: skip
    assert manifest["counts"]["train"] + manifest["counts"]["test"] == len(rows) == 17

    direct = load_samples(root / "llava_v1_5_mix665k.json", task="qa", dataset="llava")
    converted = [sample for split in ("train", "test") for sample in load_samples(tmp_path / f"out/mix/{split}.jsonl")]
    assert len(direct) == len(converted) == 17
    assert sum(s["media"] is None for s in direct) == sum(s["media"] is None for s in converted) == 5
    by_id = {sample["id"].removeprefix("llava-"): sample for sample in converted}
    for sample in direct:
        twin = by_id[sample["id"]]
        assert twin["messages"] == sample["messages"], sample["id"]
        assert twin["media"] == sample["media"] or Path(twin["media"]).resolve() == Path(sample["media"]).resolve()
        assert twin["modality"] == sample["modality"]
    assert sum(len(s["messages"]) for s in converted) == sum(len(r["conversations"]) for r in rows)


def test_mllm_cl_domain_and_ability_folders_convert_as_downloaded(tmp_path):
    def task_folder(folder, rows):
        for row in rows:
            toy_samples(folder / "images", "image", 1)
            (folder / "images" / "image-0.png").rename(folder / row["image"])
        return rows

    domain = tmp_path / "Domain_data"
    train = [{"id": f"rs-{i}", "image": f"images/{i}.png", "conversations": THREE_TURNS[:2] * (1 + i % 2)}
             for i in range(3)]  # fmt: skip
    write_json(domain / "RS" / "train.json", task_folder(domain / "RS", train))
    test = [{"question_id": 9, "image": "images/t.png", "text": "what color is it ?", "answer": "red"}]
    write_json(domain / "RS" / "test.json", task_folder(domain / "RS", test))
    manifest = convert("mllm_cl", domain, tmp_path / "out", output_name="rs", task="RS", progress=False)
    assert manifest["counts"] == {"train": 3, "test": 1} and manifest["dataset"] == "RS"
    rows = load_samples(tmp_path / "out/rs/train.jsonl")
    assert [len(row["messages"]) for row in rows] == [2, 4, 2]
    assert {row["modality"] for row in rows} == {"image"} and {row["dataset"] for row in rows} == {"RS"}

    ability = tmp_path / "Ability_data"  # the test set sits in its own <task>_test folder
    write_json(ability / "OCR" / "train.json", task_folder(ability / "OCR", train))
    write_json(ability / "OCR_test" / "test.json", task_folder(ability / "OCR_test", test))
    manifest = convert("mllm_cl", ability / "OCR", tmp_path / "out", output_name="ocr", progress=False)
    assert manifest["counts"] == {"train": 3, "test": 1} and manifest["dataset"] == "OCR"
    sample = load_samples(tmp_path / "out/ocr/test.jsonl")[0]
    assert sample["media"].endswith("OCR_test/images/t.png") and sample["references"] == ["red"]
    with pytest.raises(ValueError, match="holds no train.json"):
        convert("mllm_cl", ability, tmp_path / "out", progress=False)


def chat_processor(model):
    """The tiny processor over a tokenizer whose chat template marks the turns with words of the tiny vocabulary."""
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}the {{ m['content'] }} .{% else %} is {{ m['content'] }}"
        "</s>{% endif %}{% endfor %}{% if add_generation_prompt %} is{% endif %}"
    )
    return MeraProcessor(tokenizer, model.config, {"image": tiny_image_processor()}, use_chat_template=True)


def test_conversations_are_rendered_with_the_processors_chat_template():
    model = build_tiny_model(("image",))
    messages = [{"role": turn["from"].replace("human", "user").replace("gpt", "assistant"), "content": turn["value"]}
                for turn in THREE_TURNS[:4]]  # fmt: skip
    eos = tiny_tokenizer().eos_token_id
    tokens = tiny_tokenizer()(["red", "a square"], add_special_tokens=False)["input_ids"]

    # The LLM's chat template (use_chat_template): the assistant turns are what it adds after the generation prompt.
    processor = chat_processor(model)
    pieces = render_conversation(processor, messages)
    assert [trainable for _, trainable in pieces] == [False, True, False, True]
    assert [text for text, trainable in pieces if trainable] == [" red</s>", " a square</s>"]
    ids, labels, counts = encode_conversation(processor, messages)
    assert counts == {"image": 1} and ids[0] == processor.tokenizer.bos_token_id, "BOS first, as the processor adds it"
    assert assistant_spans(labels) == [tokens[0] + [eos], tokens[1] + [eos]]
    # Generation is prompted with exactly what training saw before the answer.
    prompt, _, _ = encode_conversation(processor, messages[:3], add_generation_prompt=True)
    assert ids[: len(prompt)] == prompt and labels[len(prompt) :] == ids[len(prompt) :]

    # The plain template of a base LLM: the turns as they are, each answer after a space and ended by EOS; one turn
    # encodes as the processor's own prompt + answer call does.
    processor = tiny_processor(model)
    assert render_conversation(processor, messages[:2]) == [("<image>\nwhat color is it ?", False), (" red</s>", True)]
    sample = {"id": "one", "modality": "image", "media": np.zeros((32, 32, 3), np.uint8), "messages": messages[:2]}
    batch = encode_samples(processor, [sample])
    reference = processor(["<image>\nwhat color is it ?"], media=[{"image": sample["media"]}], answers=["red"])
    assert torch.equal(batch["input_ids"], reference["input_ids"]) and torch.equal(
        batch["labels"], reference["labels"]
    )


@pytest.mark.parametrize(
    "row, message",
    [
        ({"conversations": [{"from": "gpt", "value": "hi"}]}, "starting with the user"),
        ({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}, "taking turns"),
        ({"conversations": [{"from": "robot", "value": "a"}]}, "turn 1 must have a role"),
        ({"modality": "image", "prompt": "what ?", "answer": "red"}, "names modality 'image' but has no 'media'"),
        ({"image": ["a.png", "b.png"], "prompt": "what ?", "answer": "red"}, "a sample holds zero or one media"),
    ],
)
def test_bad_conversations_are_named(tmp_path, row, message):
    with pytest.raises(ValueError, match=message):
        load_samples(write_json(tmp_path / "rows.json", [row]), check_media=False)


def test_a_task_stage_keeps_the_modality_and_skips_connector_pretraining(tmp_path):
    base = build_tiny_model(())
    processor = tiny_processor(base)
    first = load_samples(toy_samples(tmp_path / "a", "image", 3))
    second = first.filter(lambda task: task == "qa", input_columns="task")  # QA only
    stage_1 = run_stage(base, processor, SPECS["image"], first, tmp_path / "s1", plugins=[], settings=tiny_settings())
    spec = ModalitySpec(name="image", task="colours")
    stage_2 = run_stage(stage_1, None, spec, second, tmp_path / "s2", plugins=[], settings=tiny_settings())
    info = json.loads((stage_2 / "stage.json").read_text())
    assert info["stage"] == 2 and info["tasks"] == ["image", "colours"] and info["modalities"] == ["image"]
    assert "skipped" in info["log"]["pretrain"] and info["log"]["finetune"]["samples"] == 3


def test_eproj_refuses_a_task_on_a_learnt_modality_before_anything_is_written(tmp_path):
    stages = [{"name": "image", "task": task, "train": f"{task}.jsonl", "test": f"{task}.jsonl"} for task in "ab"]
    config = ContinualConfig(method="eproj", modalities=stages, output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="cannot add a task on a modality learnt before .*'b' on 'image'"):
        run_continual(config)
    assert not (tmp_path / "run").exists()
    one_stage = ContinualConfig(method="eproj", modalities=stages[:1], output_dir=str(tmp_path / "run"))
    check_method_fits_plan(one_stage, build_stage_plan(one_stage))  # one stage: nothing refused
    base = build_tiny_model(())
    first = load_samples(toy_samples(tmp_path / "a", "image", 2))
    stage_1 = run_stage(base, tiny_processor(base), SPECS["image"], first, tmp_path / "s1", plugins=[],
                        settings=tiny_settings())  # fmt: skip
    with pytest.raises(ValueError, match=r"plug-in\(s\) \['eproj'\] isolate what each modality learns"):
        run_stage(stage_1, None, ModalitySpec("image", task="b"), first, tmp_path / "s2",
                  plugins=get_method_plugins("eproj"), settings=tiny_settings())  # fmt: skip
    assert not (tmp_path / "s2").exists()
