"""Several processes (CPU, gloo): evaluation split across them equals one process's."""

import json

import pytest
from conftest import accelerate_launch_cpu, build_tiny_model, tiny_processor, toy_samples

from trainers.evaluation.generation import evaluate_model

EVALUATION_SCRIPT = """
import json, sys
from pathlib import Path
from conftest import build_tiny_model, tiny_processor
from trainers.distributed import close_process_group, process_state
from trainers.evaluation.generation import evaluate_model

out = Path(sys.argv[1])
samples = json.loads((out / "samples.json").read_text())
model = build_tiny_model(("image", "audio"))
calls = []
generate = model.generate
model.generate = lambda **kwargs: calls.append(len(kwargs["input_ids"])) or generate(**kwargs)
state = process_state()
result = evaluate_model(model, tiny_processor(model), samples, judge="match", batch_size=2, max_new_tokens=4,
                        output_file=out / "eval.json", progress=False)
record = {"processes": state.num_processes, "generated": calls, "scores": result["scores"],
          "predictions": [p["prediction"] for p in result["predictions"]]}
(out / f"rank-{state.process_index}.json").write_text(json.dumps(record))
close_process_group()
"""


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    samples = []
    for modality in ("image", "audio"):
        for sample in toy_samples(folder / modality, modality, count=5):
            samples.append({**sample, "dataset": f"{modality}-{sample['task']}"})
    return samples


def test_evaluation_under_two_processes_equals_one_process(samples, tmp_path):
    model = build_tiny_model(("image", "audio"))
    alone = evaluate_model(model, tiny_processor(model), samples, judge="match", batch_size=2, max_new_tokens=4,
                           progress=False)  # fmt: skip
    assert any(p["prediction"] for p in alone["predictions"]), "the tiny model should produce some words"

    (tmp_path / "samples.json").write_text(json.dumps(samples))
    script = tmp_path / "split_evaluation.py"  # not evaluate.py, which would shadow the `evaluate` library
    script.write_text(EVALUATION_SCRIPT)
    result = accelerate_launch_cpu(2, script, str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [rank["processes"] for rank in ranks] == [2, 2]
    # 10 samples of each modality in batches of 2: 10 batches, dealt out 5 and 5; together they cover every sample.
    assert [len(rank["generated"]) for rank in ranks] == [5, 5]
    assert sum(sum(rank["generated"]) for rank in ranks) == len(samples)
    for rank in ranks:
        assert rank["scores"] == alone["scores"]
        assert rank["predictions"] == [p["prediction"] for p in alone["predictions"]]
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["scores"] == alone["scores"]
    assert not list(tmp_path.glob("*.tmp")), "only the main process writes, atomically"


def sharded_lora_stage(shard: bool) -> tuple[dict, str]:
    """
    One stage's LoRA fine-tuning (3 SGD steps) and MERA merge (stage 2), with the LLM sharded by FSDP2 when `shard`
    (torch's `fully_shard` over gloo, applied as accelerate applies it: each decoder layer, then the root). Returns
    the merged LLM, gathered the way `MeraSFTTrainer.train` gathers it, and the type of a trained parameter.
    """
    import copy

    import torch
    from peft import get_peft_model
    from torch.distributed.fsdp import fully_shard

    from trainers.distributed import gathered_state_dict
    from trainers.merge import llm_state_dict, merge_stage_adapter
    from trainers.sft import llm_lora_config

    torch.manual_seed(0)
    model = build_tiny_model(("image",))
    peft_model = get_peft_model(model, llm_lora_config(model, r=4, lora_alpha=8, lora_dropout=0.0))
    whole = copy.deepcopy(peft_model)
    if shard:
        for layer in peft_model.base_model.model.model.language_model.layers:
            fully_shard(layer)
        fully_shard(peft_model)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    ids = torch.randint(4, 30, (2, 8), generator=torch.Generator().manual_seed(1))
    for _ in range(3):  # the same batch on every process: FSDP's averaged gradient is the one-process gradient
        peft_model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    trained_type = type(next(p for n, p in peft_model.named_parameters() if "lora_B" in n)).__name__
    whole.load_state_dict(gathered_state_dict(peft_model))
    return llm_state_dict(merge_stage_adapter(whole, stage=2)), trained_type


# accelerate 1.15 attaches its FSDP plug-in only on accelerators (a CPU launch reads MULTI_CPU and trains unsharded),
# so the Trainer cannot shard on this CPU: the sharding is applied with torch's own FSDP2 over gloo instead.
FSDP_SCRIPT = """
import sys
from pathlib import Path
import torch
from test_distributed import sharded_lora_stage
from trainers.distributed import process_state

state = process_state()
merged, trained_type = sharded_lora_stage(shard=True)
torch.save({"merged": merged, "processes": state.num_processes, "type": trained_type},
           Path(sys.argv[1]) / f"rank-{state.process_index}.pt")
"""


def test_fsdp_sharded_lora_stage_merges_like_one_process(tmp_path):
    import torch

    alone, trained_type = sharded_lora_stage(shard=False)
    assert trained_type == "Parameter"
    script = tmp_path / "fsdp_stage.py"
    script.write_text(FSDP_SCRIPT)
    result = accelerate_launch_cpu(2, script, str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        sharded = torch.load(tmp_path / f"rank-{rank}.pt")
        assert sharded["processes"] == 2 and sharded["type"] == "DTensor", "the LLM was really sharded"
        assert sharded["merged"].keys() == alone.keys()
        for name, value in alone.items():
            torch.testing.assert_close(sharded["merged"][name], value, atol=1e-5, rtol=0)
    # Training and the merge moved the LLM: the comparison is not between two untouched copies.
    untouched = dict(build_tiny_model(("image",)).named_parameters())
    assert any(not torch.equal(value, untouched[name].detach()) for name, value in alone.items() if name in untouched)


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({"ACCELERATE_USE_FSDP": "true"}, "FSDP"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "DeepSpeed ZeRO-3"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, None),
        ({}, None),
    ],
)
def test_a_sharded_launch_is_known_before_any_model_and_refuses_ewc(monkeypatch, environment, expected):
    from trainers.distributed import sharded_launch
    from trainers.methods import get_method_plugins
    from trainers.settings import ContinualConfig

    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert sharded_launch() == expected
    if expected is None:
        assert get_method_plugins("ewc", ContinualConfig())[0].name == "ewc"
    else:
        with pytest.raises(ValueError, match=f"method ewc: its penalty reads whole LLM weights.*{expected}"):
            get_method_plugins("ewc", ContinualConfig())
