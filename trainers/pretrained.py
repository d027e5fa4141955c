"""
The pretrained checkpoints a continual run reads: the language model, each modality's encoder weights and each
Q-Former's `init_from`. A dry run lists them with where each is expected, and a missing local file stops it.
"""

import os
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id

# Released checkpoints come as single files (BEATs .pt, Point-BERT .pth); anything else is a folder or a Hub id.
CHECKPOINT_FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def locate_checkpoint(reference: str) -> dict:
    """
    Where `reference` is expected: `{"kind": "file" | "folder", "path": absolute path, "exists": bool}` for a local
    file or folder, `{"kind": "hub", "repo_id": ..., "cached": bool}` for a Hub id (downloaded on first use; whether
    it is already in the local cache is all that can be checked offline).
    """
    path = Path(reference).expanduser()
    if path.suffix in CHECKPOINT_FILE_SUFFIXES or path.is_file():
        return {"kind": "file", "path": str(path.resolve()), "exists": path.is_file()}
    if path.is_dir() or path.is_absolute() or reference.startswith("."):
        return {"kind": "folder", "path": str(path.resolve()), "exists": path.is_dir()}
    try:
        validate_repo_id(reference)
    except HFValidationError:
        return {"kind": "folder", "path": str(path.resolve()), "exists": False}
    cached = isinstance(try_to_load_from_cache(reference, "config.json"), str)
    return {"kind": "hub", "repo_id": reference, "cached": cached}


def required_checkpoints(language_model: str, modalities: list[dict]) -> list[dict]:
    """Every pretrained checkpoint a run's config names, in stage order, each with `locate_checkpoint`'s answer."""
    entries = []
    if language_model:
        entries.append({"modality": "-", "role": "language model", "reference": language_model})
    for modality in modalities:
        name = modality.get("name", "?")
        if modality.get("encoder_weights"):
            entries.append({"modality": name, "role": "encoder", "reference": str(modality["encoder_weights"])})
        init_from = (modality.get("connector") or {}).get("init_from")
        if init_from:
            entries.append({"modality": name, "role": "connector init_from", "reference": str(init_from)})
    return [{**entry, **locate_checkpoint(entry["reference"])} for entry in entries]


def missing_checkpoints(entries: list[dict]) -> list[dict]:
    """The local files and folders among `entries` that do not exist (Hub ids cannot be checked offline)."""
    return [entry for entry in entries if entry["kind"] != "hub" and not entry["exists"]]


def format_checkpoints(entries: list[dict]) -> str:
    lines = ["pretrained checkpoints:"]
    for entry in entries:
        what = f"  {entry['role']}:" if entry["modality"] == "-" else f"  {entry['modality']} {entry['role']}:"
        if entry["kind"] == "hub":
            cache = "in the local cache" if entry["cached"] else "not in the local cache: downloaded on first use"
            lines.append(f"{what} Hub {entry['repo_id']} ({cache})")
        else:
            state = "found" if entry["exists"] else "MISSING"
            lines.append(f"{what} {entry['kind']} {entry['path']} ({state})")
    missing = missing_checkpoints(entries)
    if missing:
        names = ", ".join(os.path.basename(entry["path"]) for entry in missing)
        lines.append(f"missing checkpoint(s): {names}; see docs/encoders.md for where to get them")
    return "\n".join(lines)
