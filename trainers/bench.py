"""
`mera bench`: where the time of a continual run goes, side by side, on the offline benchmark (`trainers.demo`).

Every figure is process CPU time (`time.process_time`, one torch thread), so that a loaded machine slows the
measurement less than wall-clock time would; repetitions are interleaved (A B, B A, A B, ...) and reported as median
with min-max. The sections follow the paper's Table 6 and the costs a run pays:

    training    each method's per-phase time over all stages (pre-train, fine-tune, merge, realign, save) and
                evaluation, from the `phase_seconds` each stage records in stage.json; each run in its own process
                (its peak memory: the highest of its stages' `peak_memory_mb`, resident set or GPU allocation)
    floor       MERA's computed floor next to the measured ratio: the sample-passes of MERA's phases (realign's
                replayed samples x epochs added) over Fine-Tuning's
    llava       forward+backward and greedy generation of `MeraForCausalLM` vs `LlavaForConditionalGeneration`
                holding the same weights (the final image stage)
    latency     per-token decoding time of each method's final model, one prompt at a time (Table 6)
    data_path   per modality: samples/s the collator delivers (media read + preprocess + tokenise; and with the
                frozen-encoder cache) next to samples/s a training step consumes
    lora_step   the fine-tuning step (LoRA on the LLM, the new connector): its FLOPs counted by torch's
                `FlopCounterMode`, the FLOP/s achieved, and on a GPU whose peak is known (or `peak_tflops`) the
                model FLOPs utilisation (MFU); in bf16 on a GPU that supports it
"""

import json
import multiprocessing
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

PHASES = ("pretrain", "finetune", "merge", "realign", "save")
TRAIN_PHASES = ("pretrain", "finetune", "merge", "realign")


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# --- training: one method's run, in a process of its own -------------------------------------------------------------
def _train_method(config, test_limit: int | None, result_file: str):
    """Run every stage of `config.method` and evaluate each; write the stages' timings and counts to `result_file`.
    The run's console goes to the `.log` file beside it: the bench prints one line per run."""
    with open(Path(result_file).with_suffix(".log"), "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    import torch

    from . import console

    console.configure(verbose=False)
    torch.set_num_threads(1)
    from .continual import build_stage_plan, load_stage_data, run_stages

    config = replace(config, test_limit=test_limit)
    output_dir = Path(config.output_dir)
    plan = build_stage_plan(config)
    run_stages(config, plan, output_dir)
    stages, peaks = [], []
    for step in plan:
        info = json.loads((output_dir / f"stage-{step.stage}" / "stage.json").read_text())
        log = info["log"]
        peaks.append(info["peak_memory_mb"])  # the stage's peak (trainers.evaluation.cost.PeakMemory)
        evaluation = json.loads((output_dir / "eval" / f"stage-{step.stage}.json").read_text())
        train = load_stage_data(step.train_files)
        stages.append(
            {
                "stage": step.stage,
                "modality": step.spec.name,
                "phase_cpu": {name: t["cpu"] for name, t in log.get("phase_seconds", {}).items()},
                "evaluation_cpu": evaluation["seconds"]["cpu"],
                "captions": sum(1 for task in train["task"] if task == "caption"),
                "finetune_samples": log.get("finetune", {}).get("samples", len(train)),
                "realign_samples": log.get("realign", {}).get("samples", 0),
            }
        )
    Path(result_file).write_text(json.dumps({"stages": stages, "peak_memory_mb": max(peaks)}))


def _run_in_process(config, test_limit, result_file: Path) -> dict:
    result_file.parent.mkdir(parents=True, exist_ok=True)
    process = multiprocessing.get_context("spawn").Process(
        target=_train_method, args=(config, test_limit, str(result_file))
    )
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(
            f"the {config.method} run in {config.output_dir} failed (exit code {process.exitcode}); its console is "
            f"in {result_file.with_suffix('.log')}"
        )
    return json.loads(result_file.read_text())


def sample_passes(stages: list[dict], settings) -> float:
    """Training samples x epochs over all stages and phases (realign counted when it ran)."""
    epochs = {
        phase: float(settings.phase_overrides(phase).get("num_train_epochs", 1.0))
        for phase in ("pretrain", "finetune", "realign")
    }
    return sum(
        s["captions"] * epochs["pretrain"]
        + s["finetune_samples"] * epochs["finetune"]
        + s["realign_samples"] * epochs["realign"]
        for s in stages
    )


def bench_training(base_config, methods: list[str], repetitions: int, out: Path, test_limit: int | None) -> dict:
    """Interleaved runs of every method; per-phase CPU seconds (median, min-max), peak memory, MERA's floor."""
    from .continual import build_stage_plan

    runs = {method: [] for method in methods}
    count = 0
    for repetition in range(repetitions):
        order = methods if repetition % 2 == 0 else methods[::-1]
        for method in order:
            count += 1
            label = f"[{count}/{repetitions * len(methods)}] {method}, repetition {repetition + 1}/{repetitions}"
            print(f"{label}: training {len(build_stage_plan(base_config))} stages ...", end=" ", flush=True)
            run_dir = out / "runs" / f"{method}-{repetition}"
            # A feature cache of its own, when on: every run pays for encoding its items once, as a real run does.
            cache = str(run_dir / "features") if base_config.feature_cache else None
            config = replace(base_config, method=method, output_dir=str(run_dir), feature_cache=cache)
            run = _run_in_process(config, test_limit, out / "runs" / f"{method}-{repetition}.json")
            runs[method].append(run)
            training = sum(s["phase_cpu"].get(p, 0.0) for s in run["stages"] for p in TRAIN_PHASES)
            print(f"{training:.2f} CPU s (log: {out / 'runs' / f'{method}-{repetition}.log'})", flush=True)
    result = {}
    for method, method_runs in runs.items():
        per_phase = {}
        for phase in (*PHASES, "evaluation"):
            totals = [
                sum(
                    s["evaluation_cpu"] if phase == "evaluation" else s["phase_cpu"].get(phase, 0.0)
                    for s in r["stages"]
                )
                for r in method_runs
            ]
            per_phase[phase] = _summary(totals)
        training = [sum(s["phase_cpu"].get(p, 0.0) for s in r["stages"] for p in TRAIN_PHASES) for r in method_runs]
        result[method] = {
            "phase_cpu_seconds": per_phase,
            "training_cpu_seconds": _summary(training),
            "peak_memory_mb": _summary([r["peak_memory_mb"] for r in method_runs]),
            "sample_passes": sample_passes(method_runs[0]["stages"], base_config),
            "stages": method_runs[0]["stages"],
            "_training": training,
        }
    if "mera" in result and "fine_tuning" in result:
        # Interleaved pairs: repetition k of MERA against repetition k of Fine-Tuning. Two runs are two processes at
        # two moments of a shared machine, so the pairs drift by several percent.
        ratios = [m / f for m, f in zip(result["mera"]["_training"], result["fine_tuning"]["_training"])]
        # Within each MERA run: its training time over the same run's time without realign, the only phase MERA
        # adds to the ones it shares with Fine-Tuning (pre-train, fine-tune, merge: the same work). No second
        # process, no drift between runs.
        within = [
            total / (total - sum(s["phase_cpu"].get("realign", 0.0) for s in run["stages"]))
            for total, run in zip(result["mera"]["_training"], runs["mera"])
        ]
        floor = result["mera"]["sample_passes"] / result["fine_tuning"]["sample_passes"]
        result["mera_vs_fine_tuning"] = {
            "measured_ratio": _summary(ratios),
            "within_run_ratio": _summary(within),
            "computed_floor": floor,
            "above_floor_percent": 100 * (statistics.median(ratios) / floor - 1),
            "within_run_above_floor_percent": 100 * (statistics.median(within) / floor - 1),
        }
    for entry in result.values():
        entry.pop("_training", None)
    return result


# --- the model against transformers' LLaVA ---------------------------------------------------------------------------
def llava_twin(model):
    """`LlavaForConditionalGeneration` holding the image modality's encoder, connector and LLM weights of `model`."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    modality = model.config.modality("image")
    connector = model.connectors["image"]
    vocab_size = model.config.text_config.vocab_size
    llava = LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=model.encoders["image"].config,
            text_config=model.config.text_config,
            image_token_index=vocab_size - 1,  # LLaVA needs an in-vocabulary id; MERA's placeholders lie outside
            image_seq_length=modality.num_tokens,
            vision_feature_layer=modality.feature_layer,
            vision_feature_select_strategy=modality.feature_select_strategy,
            projector_hidden_act="gelu",
        )
    )
    llava.model.vision_tower.load_state_dict(model.encoders["image"].state_dict())
    llava.model.multi_modal_projector.linear_1.load_state_dict(connector.layers[0].state_dict())
    llava.model.multi_modal_projector.linear_2.load_state_dict(connector.layers[1].state_dict())
    llava.model.language_model.load_state_dict(model.language_model.state_dict())
    llava.lm_head.load_state_dict(model.lm_head.state_dict())
    return llava.to(model.dtype)


def _timed(function, iterations: int, *args) -> float:
    """Process CPU seconds per call of `function(*args)`."""
    start = time.process_time()
    for _ in range(iterations):
        function(*args)
    return (time.process_time() - start) / iterations


def bench_llava(model, processor, samples: list[dict], repetitions: int, iterations: int, new_tokens: int) -> dict:
    """Forward+backward and greedy generation, MERA vs LLaVA at equal weights, in interleaved pairs."""
    import torch

    from .data import MeraDataCollator, encode_samples

    images = [s for s in samples if s["modality"] == "image"][:8]
    batch = MeraDataCollator(processor)(images)
    llava = llava_twin(model)
    placeholder = model.config.placeholder_token_ids["image"]
    llava_ids = batch["input_ids"].masked_fill(batch["input_ids"] == placeholder, llava.config.image_token_index)
    llava_batch = {
        "input_ids": llava_ids,
        "attention_mask": batch["attention_mask"],
        "labels": batch["labels"],
        "pixel_values": batch["modality_inputs"]["image"],
    }
    # The same trainable weights in both: the LLM, the image encoder and its connector (MERA's other modalities stay
    # frozen, so that neither model walks parameters the other does not hold).
    trainable = {}
    for name, module in (("mera", model), ("llava", llava)):
        module.train()
        module.requires_grad_(name == "llava")
        if name == "mera":
            for part in (model.language_model, model.lm_head, model.encoders["image"], model.connectors["image"]):
                part.requires_grad_(True)
        trainable[id(module)] = [p for p in module.parameters() if p.requires_grad]
    if len(trainable[id(model)]) != len(trainable[id(llava)]):
        raise RuntimeError("the MERA model and its LLaVA twin do not train the same number of tensors")

    def step(module, inputs):
        for parameter in trainable[id(module)]:
            parameter.grad = None
        module(**inputs).loss.backward()

    prompts = encode_samples(processor, images, "left", for_generation=True)  # as evaluation prompts
    prompt_ids = prompts["input_ids"].masked_fill(prompts["input_ids"] == placeholder, llava.config.image_token_index)
    pad = processor.tokenizer.pad_token_id
    generation = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": pad}

    def generate(module, inputs):
        with torch.no_grad():
            module.generate(**inputs, **generation)

    mera_gen = {
        "input_ids": prompts["input_ids"],
        "attention_mask": prompts["attention_mask"],
        "modality_inputs": prompts["modality_inputs"],
    }
    llava_gen = {
        "input_ids": prompt_ids,
        "attention_mask": prompts["attention_mask"],
        "pixel_values": prompts["modality_inputs"]["image"],
    }
    times = {"mera_step": [], "llava_step": [], "mera_generate": [], "llava_generate": []}
    step(model, batch)  # warm-up
    step(llava, llava_batch)
    for repetition in range(repetitions):
        pairs = [("mera", model, batch, mera_gen), ("llava", llava, llava_batch, llava_gen)]
        for name, module, train_inputs, gen_inputs in pairs if repetition % 2 == 0 else pairs[::-1]:
            times[f"{name}_step"].append(_timed(step, iterations, module, train_inputs))
            module.eval()
            times[f"{name}_generate"].append(_timed(generate, 3, module, gen_inputs) / new_tokens)
            module.train()
    step_ratios = [m / v for m, v in zip(times["mera_step"], times["llava_step"])]
    generate_ratios = [m / v for m, v in zip(times["mera_generate"], times["llava_generate"])]
    return {
        "batch": len(images),
        "forward_backward_seconds": {k: _summary(times[f"{k}_step"]) for k in ("mera", "llava")},
        "forward_backward_ratio": _summary(step_ratios),
        "generate_seconds_per_token": {k: _summary(times[f"{k}_generate"]) for k in ("mera", "llava")},
        "generate_ratio": _summary(generate_ratios),
    }


# --- per-token latency of the final models ---------------------------------------------------------------------------
def bench_latency(models: dict, samples: list[dict], repetitions: int, new_tokens: int) -> dict:
    """Seconds per generated token of each method's final model (`generation_latency`: one prompt at a time, as in
    the paper's Table 6, on 8 prompts of every modality; process CPU time on a CPU, wall time on a GPU)."""
    import torch

    from .evaluation.cost import generation_latency

    clock = time.perf_counter if torch.cuda.is_available() else time.process_time
    modalities = sorted({s["modality"] for s in samples})
    times = {method: [] for method in models}
    names = list(models)
    for repetition in range(repetitions):
        for method in names if repetition % 2 == 0 else names[::-1]:
            model, processor = models[method]
            per_modality = [
                generation_latency(
                    model, processor, [s for s in samples if s["modality"] == name][:8], new_tokens, clock=clock
                )["ms_per_token"]
                for name in modalities
            ]
            times[method].append(statistics.fmean(per_modality) / 1000)
    return {method: _summary(values) for method, values in times.items()}


# --- the data path against the training step -------------------------------------------------------------------------
def bench_data_path(model, processor, samples: list[dict], cache_dir: Path, repetitions: int, batch_size: int) -> dict:
    """Per modality: samples/s of the collator (fresh: read + preprocess + tokenise; cached) and of a training step."""
    from .data import MeraDataCollator
    from .data.feature_cache import EncoderFeatureCache

    model.train()
    # As in training: the encoders frozen (set_trainable), the LLM and connectors trainable.
    model.requires_grad_(True)
    for encoder in model.encoders.values():
        encoder.requires_grad_(False)
    cache = EncoderFeatureCache(cache_dir)
    result = {}
    for modality in sorted({s["modality"] for s in samples}):
        batch_samples = [s for s in samples if s["modality"] == modality][:batch_size]
        cache.fill(model, processor, batch_samples)
        warm = MeraDataCollator(processor, feature_cache=cache)
        warm(batch_samples)
        fresh_times, warm_times, step_times, cached_step_times = [], [], [], []
        for _ in range(repetitions):
            fresh_times.append(_timed(MeraDataCollator(processor, memo_bytes=0), 1, batch_samples))
            warm_times.append(_timed(warm, 1, batch_samples))
            raw_batch = MeraDataCollator(processor)(batch_samples)
            cached_batch = warm(batch_samples)
            for inputs, bucket in ((raw_batch, step_times), (cached_batch, cached_step_times)):

                def step(inputs=inputs):
                    model.zero_grad(set_to_none=True)
                    model(**inputs).loss.backward()

                bucket.append(_timed(step, 1))
        per_second = {
            "collator_fresh": [batch_size / t for t in fresh_times],
            "collator_cached": [batch_size / t for t in warm_times],
            "step_raw_inputs": [batch_size / t for t in step_times],
            "step_cached_features": [batch_size / t for t in cached_step_times],
        }
        result[modality] = {key: _summary(values) for key, values in per_second.items()}
    return result


# --- FLOPs and MFU of the LoRA fine-tuning step ---------------------------------------------------------------------
# Dense bf16 peaks (no sparsity) of the GPUs the paper-scale runs use, in TFLOP/s, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 80GB HBM3": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "A100": 312.0}


def device_peak_tflops(device_name: str | None) -> float | None:
    """The dense bf16 peak of a GPU by its name (torch.cuda.get_device_name), None when not known."""
    if not device_name:
        return None
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key in device_name:
            return PEAK_BF16_TFLOPS[key]
    return None


def bench_lora_step(
    model,
    processor,
    samples: list[dict],
    settings,
    repetitions: int,
    batch_size: int,
    peak_tflops: float | None = None,
) -> dict:
    """
    FLOPs of one fine-tuning step of `model` (a stage's MERA model) as a stage trains it (LoRA on the LLM and the
    newest modality's connector trainable, encoders frozen, raw inputs), counted by torch's `FlopCounterMode`, and
    the FLOP/s achieved: process CPU time on a CPU, synchronised wall time on a GPU.
    """
    import torch
    from peft import get_peft_model
    from torch.utils.flop_counter import FlopCounterMode

    from .data import MeraDataCollator
    from .sft import llm_lora_config, set_trainable

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    model = get_peft_model(model, llm_lora_config(model, **settings.lora_settings())).to(device, dtype)
    set_trainable(model, ["connector:new", "llm:lora"])
    model.train()
    newest = model.modalities[-1]  # PeftModel reads attributes through to the MERA model
    batch = MeraDataCollator(processor)([s for s in samples if s["modality"] == newest][:batch_size])

    def to_device(value):
        if isinstance(value, dict):
            return {key: to_device(item) for key, item in value.items()}
        if isinstance(value, torch.Tensor):
            return value.to(device, dtype) if value.is_floating_point() else value.to(device)
        return value

    batch = to_device(dict(batch))

    def step():
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()

    step()  # warm-up (allocations, kernels)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    seconds = []
    for _ in range(repetitions):
        if cuda:
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(10):
                step()
            torch.cuda.synchronize()
            seconds.append((time.perf_counter() - start) / 10)
        else:
            seconds.append(_timed(step, 3))
    device_name = torch.cuda.get_device_name() if cuda else None
    peak = peak_tflops or device_peak_tflops(device_name)
    achieved = [flops / t / 1e12 for t in seconds]
    return {
        "device": device_name or "cpu (1 thread, process time)",
        "dtype": str(dtype).removeprefix("torch."),
        "modality": newest,
        "batch": len(batch["input_ids"]),
        "tokens": int(batch["attention_mask"].sum()),
        "flops_per_step": flops,
        "seconds_per_step": _summary(seconds),
        "achieved_tflops": _summary(achieved),
        "peak_tflops": peak,
        "mfu": _summary([a / peak for a in achieved]) if peak else None,
    }


# --- the whole bench -------------------------------------------------------------------------------------------------
def plot_bench(result: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 4.5), gridspec_kw={"width_ratios": [3, 2, 3]})
    training = result["training"]
    methods = [m for m in training if m != "mera_vs_fine_tuning"]
    bottom = [0.0] * len(methods)
    for phase in (*PHASES, "evaluation"):
        heights = [training[m]["phase_cpu_seconds"][phase]["median"] for m in methods]
        left.bar(methods, heights, bottom=bottom, label=phase)
        bottom = [b + h for b, h in zip(bottom, heights)]
    left.set_ylabel("CPU seconds (median)")
    title = "per phase, all stages"
    if "mera_vs_fine_tuning" in training:
        ratio = training["mera_vs_fine_tuning"]
        title += (
            f"\nMERA/FT training {ratio['measured_ratio']['median']:.3f}x (within MERA's runs "
            f"{ratio['within_run_ratio']['median']:.3f}x), floor {ratio['computed_floor']:.3f}x"
        )
    left.set_title(title)
    left.legend(fontsize=8)
    latency = result["latency"]
    names = list(latency)
    reference = latency.get("mera", latency[names[0]])["median"]
    middle.bar(names, [latency[m]["median"] * 1000 for m in names], color="tab:gray")
    for index, method in enumerate(names):
        ratio = latency[method]["median"] / reference
        middle.annotate(f"{ratio:.2f}x", (index, latency[method]["median"] * 1000), ha="center", va="bottom")
    middle.set_ylabel("ms per generated token (median)")
    llava = result["llava"]["forward_backward_ratio"]["median"]
    middle.set_title(f"final models' latency (x MERA)\nfwd+bwd vs LLaVA at equal weights {llava:.3f}x")
    data = result["data_path"]
    modalities = list(data)
    keys = ("collator_fresh", "collator_cached", "step_raw_inputs", "step_cached_features")
    width = 0.2
    for index, key in enumerate(keys):
        positions = [i + (index - 1.5) * width for i in range(len(modalities))]
        right.bar(positions, [data[m][key]["median"] for m in modalities], width, label=key)
    right.set_xticks(range(len(modalities)), modalities)
    right.set_yscale("log")
    right.set_ylabel("samples / CPU second (median)")
    right.set_title("data path vs training step")
    right.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=4)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def format_bench(result: dict) -> str:
    def cell(summary, scale=1.0, digits=2):
        return (
            f"{summary['median'] * scale:.{digits}f} ({summary['min'] * scale:.{digits}f}-"
            f"{summary['max'] * scale:.{digits}f})"
        )

    training = result["training"]
    methods = [m for m in training if m != "mera_vs_fine_tuning"]
    lines = ["training, CPU seconds over all stages: median (min-max)"]
    lines.append("phase".ljust(12) + "".join(m.ljust(26) for m in methods))
    for phase in (*PHASES, "evaluation"):
        lines.append(
            phase.ljust(12) + "".join(cell(training[m]["phase_cpu_seconds"][phase]).ljust(26) for m in methods)
        )
    lines.append("training".ljust(12) + "".join(cell(training[m]["training_cpu_seconds"]).ljust(26) for m in methods))
    lines.append(
        "peak MB".ljust(12) + "".join(cell(training[m]["peak_memory_mb"], digits=0).ljust(26) for m in methods)
    )
    if "mera_vs_fine_tuning" in training:
        ratio = training["mera_vs_fine_tuning"]

        def versus(percent):
            return f"{abs(percent):.1f}% {'above' if percent >= 0 else 'below'} it"

        lines.append(
            f"MERA / Fine-Tuning training time: {cell(ratio['measured_ratio'], digits=3)} in interleaved pairs of "
            f"runs; computed floor {ratio['computed_floor']:.3f} (sample-passes); "
            f"{versus(ratio['above_floor_percent'])}"
        )
        if "within_run_ratio" in ratio:
            lines.append(
                f"MERA's runs with / without their realign phase: {cell(ratio['within_run_ratio'], digits=3)}; "
                f"{versus(ratio['within_run_above_floor_percent'])}"
            )
    llava = result["llava"]
    lines.append(
        f"vs LLaVA at equal weights (batch {llava['batch']}): forward+backward "
        f"{cell(llava['forward_backward_ratio'], digits=3)}x"
        f", generation per token {cell(llava['generate_ratio'], digits=3)}x"
    )
    lines.append(
        "per-token latency of the final models, ms: "
        + ", ".join(f"{m} {cell(s, 1000)}" for m, s in result["latency"].items())
    )
    lines.append("data path vs step, samples per CPU second (median):")
    for modality, entry in result["data_path"].items():
        lines.append(
            f"  {modality.ljust(12)} collator {entry['collator_fresh']['median']:.0f} fresh, "
            f"{entry['collator_cached']['median']:.0f} cached; step {entry['step_raw_inputs']['median']:.0f} raw, "
            f"{entry['step_cached_features']['median']:.0f} with cached features"
        )
    step = result.get("lora_step")
    if step:
        mfu = f"MFU {cell(step['mfu'], 100, 1)}%" if step["mfu"] else "MFU: peak of this device unknown"
        lines.append(
            f"LoRA fine-tuning step ({step['modality']}, batch {step['batch']}, {step['tokens']} tokens, "
            f"{step['dtype']}, {step['device']}): {step['flops_per_step'] / 1e9:.2f} GFLOP, "
            f"{cell(step['achieved_tflops'], 1000)} GFLOP/s; {mfu}"
        )
    return "\n".join(lines)


def run_bench(
    base_config,
    out: str | os.PathLike,
    methods: list[str],
    repetitions: int = 3,
    test_limit: int | None = 8,
    new_tokens: int = 8,
    peak_tflops: float | None = None,
) -> dict:
    """Every section of the bench; writes `bench.json` and `bench.png` under `out` and returns the result."""
    import torch

    from . import console

    console.configure(verbose=False)
    torch.set_num_threads(1)
    from .checkpoint import load_stage
    from .continual import build_stage_plan, load_stage_data

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.time(), time.process_time()
    result = {"settings": {"methods": methods, "repetitions": repetitions, "torch_threads": 1}}
    result["training"] = bench_training(base_config, methods, repetitions, out, test_limit)
    plan = build_stage_plan(base_config)
    train = [row for step in plan for row in load_stage_data(step.train_files)]
    last = len(plan)
    final = {m: load_stage(out / "runs" / f"{m}-0" / f"stage-{last}")[:2] for m in methods}
    reference = "mera" if "mera" in final else methods[0]
    model, processor = final[reference]
    print("MeraForCausalLM vs LlavaForConditionalGeneration at equal weights ...", flush=True)
    result["llava"] = bench_llava(model, processor, train, max(7, repetitions), iterations=10, new_tokens=new_tokens)
    model, processor = load_stage(out / "runs" / f"{reference}-0" / f"stage-{last}")[:2]
    print("per-token latency of each method's final model ...", flush=True)
    result["latency"] = bench_latency(final, train, repetitions, new_tokens)
    print("data path vs training step, per modality ...", flush=True)
    result["data_path"] = bench_data_path(model, processor, train, out / "feature_cache", repetitions, 16)
    batch_size = int(base_config.stage_settings().phase_overrides("finetune").get("per_device_train_batch_size", 16))
    model, processor = load_stage(out / "runs" / f"{reference}-0" / f"stage-{last}")[:2]
    print("FLOPs of the LoRA fine-tuning step ...", flush=True)
    result["lora_step"] = bench_lora_step(
        model,
        processor,
        train,
        base_config.stage_settings(),
        repetitions,
        batch_size,
        peak_tflops,
    )
    result["machine"] = {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }
    result["seconds"] = {
        "wall": round(time.time() - started, 1),
        "cpu_main_process": round(time.process_time() - cpu_started, 1),
    }
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_bench(result, out / "bench.png")
    return result
