"""MR-LoRA in MLLM-CL's setting: three image-only QA tasks, one per stage, routed among on the one image modality."""

import json

import numpy as np
import torch
from conftest import build_tiny_model, tiny_processor
from PIL import Image, ImageDraw
from test_mr_lora import ROUTER, _expert_weights
from test_stage import SPECS, tiny_settings

from trainers.checkpoint import load_stage
from trainers.data import load_samples
from trainers.evaluation.generation import evaluate_model
from trainers.methods import get_method_plugins
from trainers.methods.routing import routed_batches
from trainers.settings import ContinualConfig, ModalitySpec
from trainers.stage import run_stage

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def task_samples(folder, task: str, count: int, seed: int) -> list[dict]:
    """QA about 32x32 pictures: 'colours' (a plain colour), 'shapes' (a circle or a square), 'counts' (1-3 squares)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        image = Image.new("RGB", (32, 32), (10, 10, 10))
        draw = ImageDraw.Draw(image)
        if task == "colours":
            answer = list(COLORS)[index % 3]
            image = Image.fromarray(np.clip(np.array(COLORS[answer]) + rng.integers(-20, 20, (32, 32, 3)), 0, 255)
                                    .astype(np.uint8))  # fmt: skip
            question = "what color is it ?"
        elif task == "shapes":
            answer = ("circle", "square")[index % 2]
            box = [8, 8, 24, 24]
            (draw.ellipse if answer == "circle" else draw.rectangle)(box, fill=(240, 240, 240))
            question = "which shape is in the image ?"
        else:
            answer = ("one", "two", "three")[index % 3]
            for corner in range(index % 3 + 1):
                x, y = 4 + 16 * (corner % 2), 4 + 16 * (corner // 2)
                draw.rectangle([x, y, x + 8, y + 8], fill=(240, 240, 240))
            question = "how many are in the image ?"
        path = folder / f"{task}-{seed}-{index}.png"
        image.save(path)
        samples.append({"id": path.stem, "modality": "image", "media": str(path), "prompt": question,
                        "answer": answer, "task": "qa", "dataset": task})  # fmt: skip
    return samples


def test_three_image_qa_stages_each_test_input_goes_to_its_own_tasks_expert(tmp_path):
    base = build_tiny_model(())
    config = ContinualConfig(method="mr_lora", method_args=ROUTER)
    tasks = ("colours", "shapes", "counts")
    previous, models = base, {}
    for stage, task in enumerate(tasks, start=1):
        data = load_samples(task_samples(tmp_path / "train", task, 8, seed=stage))
        spec = ModalitySpec(**{**vars(SPECS["image"]), "task": task})  # after stage 1, the encoder fields go unused
        processor = tiny_processor(base) if stage == 1 else None
        plugins = get_method_plugins("mr_lora", config)
        previous = run_stage(previous, processor, spec, data, tmp_path / f"s{stage}", stage, plugins, tiny_settings())
        models[stage] = load_stage(previous)[0]
        info = json.loads((previous / "stage.json").read_text())
        assert info["log"]["router"]["accuracy"] == 1.0, info["log"]["router"]
        assert ("skipped" in info["log"]["pretrain"]) == (stage > 1), "the image connector is pre-trained once"
    model, processor, _ = load_stage(previous)
    assert model.get_base_model().modalities == ["image"], "one modality, one encoder, one connector"
    assert [expert["task"] for expert in model.routing["experts"]] == list(tasks)

    # Parameter isolation: earlier experts and the shared connector stay bit-identical after later stages.
    for adapter, first in (("expert-1", 1), ("expert-2", 2)):
        earlier, last = _expert_weights(models[first], adapter), _expert_weights(model, adapter)
        assert all(torch.equal(value, last[key]) for key, value in earlier.items()), adapter
    connector = {k: v for k, v in models[1].state_dict().items() if ".connectors.image." in k}
    final = model.state_dict()
    assert connector and all(torch.equal(value, final[key]) for key, value in connector.items())

    # Unseen test inputs of each task are routed to that task's expert, every one of them.
    tests = {task: load_samples(task_samples(tmp_path / "test", task, 6, seed=10 + i)) for i, task in enumerate(tasks)}
    for stage, task in enumerate(tasks):
        choices = [choice for batch in routed_batches(model, processor, list(tests[task])) for choice in batch]
        assert choices == [stage] * 6, task
    samples = [sample for task in tasks for sample in tests[task]]
    result = evaluate_model(model, processor, samples, judge="match", max_new_tokens=3, progress=False)
    assert result["routing"]["accuracy"] == 1.0 and result["routing"]["inputs"] == 18
    assert result["routing"]["chosen"] == {"expert-1": 6, "expert-2": 6, "expert-3": 6}
