"""
A stage checkpoint on disk, written atomically and read back:

    stage-i/
      config.json, model.safetensors, modeling_mera code   the model (`MeraForCausalLM.save_pretrained`)
      processor and tokenizer files                        the processor (`MeraProcessor.save_pretrained`)
      replay/                                              the replay buffer (`trainers.data.replay`)
      plugins/NAME.json, plugins/NAME.safetensors          the state of each plug-in that keeps one
      adapters/                                            adapters kept beside the LLM (PathWeave, MR-LoRA)
      stage.json                                           what the stage did; written last: a stage without it
                                                           is unfinished

A method that keeps adapters beside the LLM instead of folding them in names an `AdapterFormat`: the stage folder
then holds the plain base model plus `adapters/`, and `stage.json` records the format's class by import path
(`adapter_format_class`, as `auto_map` does for remote code), so that loading a stage imports the method's module
without the loop knowing its methods.
"""

import hashlib
import importlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from modeling_mera import MeraForCausalLM, MeraProcessor

from .data import ReplayBuffer
from .distributed import process_state
from .errors import UserError, UserFileNotFoundError
from .merge import unwrapped_name
from .safety import public_name, redact_secrets

STAGE_INFO = "stage.json"
REPLAY_DIR = "replay"
PLUGIN_DIR = "plugins"
ADAPTER_DIR = "adapters"
# Stages saved before formats were recorded by import path name only their format.
LEGACY_ADAPTER_FORMATS = {
    "pathweave": "trainers.methods.pathweave.PathWeaveFormat",
    "mr_lora": "trainers.methods.mr_lora.MRLoraFormat",
}


def is_finished_stage(directory: str | os.PathLike) -> bool:
    return (Path(directory) / STAGE_INFO).is_file()


def clean_finished_stage(directory: str | os.PathLike):
    """Remove what a finished stage no longer needs: its `.partial` work folder and any temporary save folder,
    left behind when a kill landed between the final rename and the clean-up."""
    directory = Path(directory)
    if is_finished_stage(directory) and process_state().is_main_process:
        for leftover in (
            directory.with_name(f"{directory.name}.partial"),
            directory.with_name(f".{directory.name}.saving"),
        ):
            shutil.rmtree(leftover, ignore_errors=True)


class AdapterFormat:
    """How a model that keeps adapters beside its LLM is written to a stage's `adapters/` folder and rebuilt."""

    name = "adapters"

    def base_model(self, model) -> MeraForCausalLM:
        """The `MeraForCausalLM` the adapters live in."""
        raise NotImplementedError

    def save(self, model, directory: Path):
        """Write the adapters (and whatever rebuilding them needs) into `directory`."""
        raise NotImplementedError

    def load(self, base: MeraForCausalLM, directory: Path, processor: MeraProcessor):
        """The model of `save`, rebuilt around the freshly loaded plain `base`."""
        raise NotImplementedError


def adapter_format_path(adapter_format: AdapterFormat) -> str:
    """The import path `stage.json` records for a format: `package.module.ClassName`."""
    return f"{type(adapter_format).__module__}.{type(adapter_format).__qualname__}"


def adapter_format_of(info: dict, where: str | os.PathLike = STAGE_INFO) -> AdapterFormat | None:
    """The adapter format a `stage.json` records (None for a plain model), imported from its recorded path."""
    path = info.get("adapter_format_class") or LEGACY_ADAPTER_FORMATS.get(info.get("adapter_format"))
    if path is None:
        if info.get("adapter_format") is not None:
            raise ValueError(f"{where}: unknown adapter_format {info['adapter_format']!r} and no adapter_format_class")
        return None
    module_name, _, class_name = path.rpartition(".")
    try:
        format_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{where}: adapter_format_class {path!r} cannot be imported ({error})") from error
    if not (isinstance(format_class, type) and issubclass(format_class, AdapterFormat)):
        raise ValueError(f"{where}: adapter_format_class {path!r} is not an AdapterFormat")
    return format_class()


def base_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """
    The weights of `model` without its adapters, under the names of the plain model: parameters of adapter
    sub-modules (any module's `adapter_layer_names`, as PEFT tuner layers declare them) are dropped and the
    `base_layer` wrappers are looked through.
    """
    adapter_names = {name for module in model.modules() for name in getattr(module, "adapter_layer_names", ())}
    return {
        unwrapped_name(key): value
        for key, value in model.state_dict().items()
        if not adapter_names.intersection(key.split("."))
    }


def save_plugin_states(plugins: list, directory: Path):
    """Each stateful plug-in's `state_dict()` as `NAME.safetensors` (tensors) and `NAME.json` (the rest)."""
    states = {plugin.name: plugin.state_dict() for plugin in plugins}
    names = [plugin.name for plugin in plugins if states[plugin.name]]
    if len(set(names)) != len(names):
        raise ValueError(f"plug-ins with state need distinct names to be saved, got {names}")
    for name in names:
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {key: value for key, value in states[name].items() if isinstance(value, torch.Tensor)}
        values = {key: value for key, value in states[name].items() if key not in tensors}
        if tensors:
            save_file({key: value.detach().contiguous().cpu() for key, value in tensors.items()},
                      str(directory / f"{name}.safetensors"))  # fmt: skip
        if values:
            (directory / f"{name}.json").write_text(json.dumps(values, indent=2, default=str) + "\n")


def load_plugin_states(plugins: list, directory: Path):
    """Hand every plug-in the state its namesake saved in `directory` (if any)."""
    for plugin in plugins:
        state = {}
        if (directory / f"{plugin.name}.safetensors").is_file():
            state.update(load_file(str(directory / f"{plugin.name}.safetensors")))
        if (directory / f"{plugin.name}.json").is_file():
            state.update(json.loads((directory / f"{plugin.name}.json").read_text()))
        if state:
            plugin.load_state_dict(state)


class CheckpointError(UserError):
    """A saved stage is damaged: a file is missing, truncated or changed since it was saved."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_manifest(directory: Path) -> dict[str, dict]:
    """Size and sha256 of every file under `directory` (but `stage.json`, which holds this manifest)."""
    return {
        path.relative_to(directory).as_posix(): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != STAGE_INFO
    }


def read_stage_info(directory: str | os.PathLike) -> dict:
    """A stage's `stage.json`; `CheckpointError` naming the file when it cannot be read."""
    path = Path(directory) / STAGE_INFO
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is damaged or unreadable ({error}); the stage must be trained again") from None


def verify_stage(directory: str | os.PathLike) -> dict:
    """
    Check a saved stage against the sizes and hashes its `stage.json` recorded when it was saved (checkpoints of
    older versions, which recorded none, pass); returns the stage info. `CheckpointError` names every damaged file.
    """
    directory = Path(directory)
    info = read_stage_info(directory)
    problems = []
    for name, expected in (info.get("files") or {}).items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != expected["size"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, {expected['size']} were saved (truncated?)")
        elif _sha256(path) != expected["sha256"]:
            problems.append(f"{name} changed since it was saved (sha256 differs)")
    if problems:
        raise CheckpointError(f"the checkpoint {directory} is damaged: " + "; ".join(problems))
    return info


def load_stage_model(directory: str | os.PathLike, processor: MeraProcessor):
    """The model of a saved stage (or phase): the plain model, or the one its adapter format rebuilds."""
    directory = Path(directory)
    model = MeraForCausalLM.from_pretrained(directory)
    adapter_format = adapter_format_of(read_stage_info(directory), directory / STAGE_INFO)
    if adapter_format is None:
        return model
    return adapter_format.load(model, directory / ADAPTER_DIR, processor)


def load_stage(directory: str | os.PathLike) -> tuple[MeraForCausalLM, MeraProcessor, ReplayBuffer]:
    """
    A saved stage: its model, processor and replay buffer. The model is a `MeraForCausalLM`, or for methods that
    keep adapters beside the LLM (PathWeave, MR-LoRA) the model their adapter format rebuilds.
    """
    directory = Path(directory)
    if not is_finished_stage(directory):
        raise UserFileNotFoundError(f"{directory} is not a finished stage (no {STAGE_INFO})")
    verify_stage(directory)
    processor = MeraProcessor.from_pretrained(directory)
    model = load_stage_model(directory, processor)
    return model, processor, ReplayBuffer.load(directory / REPLAY_DIR)


def _without_local_names(config):
    """Blank the local folders the LLM and the encoders were loaded from (`_name_or_path`) in `config`: its
    `config.json` is published with the stage, and a Hub id is kept. The weights are unaffected."""
    text_config = getattr(config, "text_config", None)
    if text_config is not None:
        text_config._name_or_path = public_name(text_config._name_or_path)
    for modality in getattr(config, "modalities", {}).values():
        encoder = modality.get("encoder_config")
        if isinstance(encoder, dict) and encoder.get("_name_or_path"):
            encoder["_name_or_path"] = public_name(encoder["_name_or_path"])


def save_stage(
    model,
    processor: MeraProcessor,
    replay: ReplayBuffer,
    info: dict,
    output_dir: Path,
    adapter_format: AdapterFormat | None = None,
    plugins: list = (),
):
    """Write a stage checkpoint atomically: into a temporary sibling folder, renamed into place when complete."""
    output_dir = Path(output_dir)
    state = process_state()
    if state.is_main_process:  # under `accelerate launch`, every process holds the same model: one writes it
        temporary = output_dir.with_name(f".{output_dir.name}.saving")
        shutil.rmtree(temporary, ignore_errors=True)
        if adapter_format is None:
            _without_local_names(model.config)
            model.save_pretrained(temporary)
        else:
            base = adapter_format.base_model(model)
            _without_local_names(base.config)
            base.save_pretrained(temporary, state_dict=base_state_dict(base))
            adapter_format.save(model, temporary / ADAPTER_DIR)
            info = {
                **info,
                "adapter_format": adapter_format.name,
                "adapter_format_class": adapter_format_path(adapter_format),
            }
        processor.config = model.config
        processor.save_pretrained(temporary)
        replay.save(temporary / REPLAY_DIR)
        save_plugin_states(list(plugins), temporary / PLUGIN_DIR)
        # Sizes and hashes of every file, checked when the stage is loaded; secrets never reach the stage's info.
        info = {**redact_secrets(json.loads(json.dumps(info, default=str))), "files": file_manifest(temporary)}
        (temporary / STAGE_INFO).write_text(json.dumps(info, indent=2, default=str) + "\n")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(temporary, output_dir)
    state.wait_for_everyone()
