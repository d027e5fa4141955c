"""The console: labelled one-line phases, library bars and metric dicts off unless verbose."""

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments
from transformers.utils import logging as transformers_logging

from trainers import console


class TinyRegression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, x, y):
        return {"loss": torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y)}


def train_tiny(tmp_path, steps: int = 6):
    data = Dataset.from_dict({"x": [[1.0, float(i)] for i in range(12)], "y": [float(i) for i in range(12)]})
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=steps,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        dataloader_pin_memory=False,
    )
    trainer = Trainer(model=TinyRegression(), args=args, train_dataset=data)
    console.install(trainer)
    trainer.train()
    return trainer


@pytest.fixture
def restore_console():
    yield
    console.configure(verbose=True)


def test_label_orders_the_fields_and_leaves_out_missing_ones():
    with console.context(method="mera", stages=4):
        with console.context(stage=2, modality="video"):
            assert console.label(phase="fine-tune") == "stage 2/4 · video · fine-tune · mera"
        assert console.label() == "mera"
    assert console.label(stage=1, phase="evaluate") == "stage 1 · evaluate"
    with pytest.raises(ValueError, match="unknown console label field"):
        with console.context(epoch=3):
            pass


def test_quiet_training_prints_one_labelled_line_and_no_metric_dicts(tmp_path, capfd, restore_console):
    console.configure(verbose=False)
    assert not transformers_logging.is_progress_bar_enabled()
    with console.context(stage=2, stages=4, modality="video", phase="fine-tune", method="mera"):
        trainer = train_tiny(tmp_path)
    captured = capfd.readouterr()
    lines = [line for line in (captured.out + captured.err).split("\n") if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].split("\r")[-1].startswith("stage 2/4 · video · fine-tune · mera") and "6/6" in lines[0]
    assert "{'loss'" not in captured.out + captured.err
    # The metrics are still recorded, one entry per logging step.
    assert sum("loss" in entry for entry in trainer.state.log_history) == 6


def test_verbose_training_keeps_the_libraries_output(tmp_path, capfd, restore_console):
    console.configure(verbose=True)
    assert transformers_logging.is_progress_bar_enabled()
    train_tiny(tmp_path, steps=2)
    captured = capfd.readouterr()
    assert "{'loss'" in captured.out + captured.err


def test_wrapping_with_peft_warns_nothing():
    """PEFT reads `is_gradient_checkpointing`, which transformers deprecated: the model answers it quietly."""
    import warnings

    from conftest import build_tiny_model
    from peft import LoraConfig, get_peft_model

    model = build_tiny_model(("image",))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert peft_model.is_gradient_checkpointing is False
    model.model.language_model.activation_checkpointing_enable()
    assert model.is_gradient_checkpointing is True
