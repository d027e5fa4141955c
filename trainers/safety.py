"""
What a run writes and publishes stays safe: no secrets in saved configs, no file outside its output folder, no
arbitrary class named by a config, no local folder names in what is published.

- Secrets: a setting whose name says it holds a credential (`hub_token`, `api_key`, `password`, `*_secret`, ...)
  is refused by the run's validation (give it through the environment: `HF_TOKEN`, `OPENAI_API_KEY`), and
  `redact_secrets` blanks it in anything written to disk, as a second line of defence.
- Paths: `confined_path` joins a user-given name onto an output root and refuses a result outside it
  (`--name ../../x`).
- Classes: `feature_processor_class` resolves a config's `processor_class` only among transformers' image
  processors and feature extractors (the classes its Auto classes load), never any attribute of `transformers`.
- Names: `public_name` keeps a Hub id and turns a local folder into "" (transformers' own "no name"), so that
  `config.json` and model cards never publish where a model was loaded from on the training machine.
"""

import os
import re
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = [
    "is_secret_setting",
    "find_secrets",
    "redact_secrets",
    "REDACTED",
    "confined_path",
    "feature_processor_class",
    "allowed_processor_classes",
    "is_hub_id",
    "public_name",
]

REDACTED = "<redacted>"
_SECRET_NAME = re.compile(r"(^|_)(token|key|secret|password|passwd|credentials?)$")
# Tokenizer settings that end in "_token" but name a vocabulary entry, not a credential.
_VOCABULARY_TOKENS = re.compile(r"^(pad|eos|bos|unk|sep|cls|mask|image|video|audio|additional_special)_token$")


def is_secret_setting(name: str) -> bool:
    """Whether a setting's name says it holds a credential: `hub_token`, `api_key`, `password`, `aws_secret`..."""
    name = str(name).lower()
    return bool(_SECRET_NAME.search(name)) and not _VOCABULARY_TOKENS.match(name)


def find_secrets(settings: Any, where: str = "") -> list[str]:
    """The dotted paths of every secret-named setting with a value, in nested dicts and lists."""
    found = []
    if isinstance(settings, dict):
        for key, value in settings.items():
            path = f"{where}.{key}" if where else str(key)
            if is_secret_setting(key) and value not in (None, "", REDACTED):
                found.append(path)
            else:
                found += find_secrets(value, path)
    elif isinstance(settings, (list, tuple)):
        for index, value in enumerate(settings):
            found += find_secrets(value, f"{where}[{index}]")
    return found


def redact_secrets(settings: Any) -> Any:
    """A copy of `settings` with the value of every secret-named setting replaced by `REDACTED`."""
    if isinstance(settings, dict):
        return {
            key: REDACTED if is_secret_setting(key) and value not in (None, "") else redact_secrets(value)
            for key, value in settings.items()
        }
    if isinstance(settings, (list, tuple)):
        return type(settings)(redact_secrets(value) for value in settings)
    return settings


def confined_path(root: str | os.PathLike, *parts: str | os.PathLike, what: str = "path") -> Path:
    """`root / parts`, refused (`UserError`) when it resolves outside `root` (`..`, an absolute part, a link)."""
    root_path = Path(root).resolve()
    path = root_path.joinpath(*parts).resolve()
    if path != root_path and root_path not in path.parents:
        shown = "/".join(str(part) for part in parts)
        raise UserError(f"{what} {shown!r} leads outside {root} (to {path}); give a name inside it")
    return path


def allowed_processor_classes() -> set[str]:
    """Every image processor and feature extractor class that transformers' Auto classes may load."""
    from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING_NAMES
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    names = set()
    for value in (*IMAGE_PROCESSOR_MAPPING_NAMES.values(), *FEATURE_EXTRACTOR_MAPPING_NAMES.values()):
        values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        names.update(name for name in values if name)
    return names


def feature_processor_class(name: str | None, where: str = "feature_processor.processor_class") -> type:
    """The transformers processor class named `name`, from the allow-list of `allowed_processor_classes`."""
    import transformers

    allowed = allowed_processor_classes()
    if not name or name not in allowed or not hasattr(transformers, name):
        examples = ", ".join(sorted(n for n in allowed if n.startswith(("CLIP", "Whisper", "Siglip"))))
        raise UserError(
            f"{where}: {name!r} is not a transformers image processor or feature extractor; name one such class "
            f"(e.g. {examples})"
        )
    return getattr(transformers, name)


def is_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub repo id (`org/name` or `name`) rather than a local path."""
    if not name or name.startswith((".", "/", "~")) or os.path.isabs(name) or Path(name).exists():
        return False
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except ValueError:
        return False
    return True


def public_name(name: str | None) -> str:
    """`name` when it is a Hub id; "" (no name) when it is a local folder, which must not be published."""
    return name if is_hub_id(name) else ""
