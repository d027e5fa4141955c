"""Content-keyed cache folders for the demo's generated artefacts (language model, encoders), written atomically."""

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "MERA_DEMO_CACHE"


def default_cache_dir() -> Path:
    """`$MERA_DEMO_CACHE`, else `~/.cache/mera-mcl/demo`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mera-mcl" / "demo")


def content_key(content) -> str:
    """A short, stable hash of JSON-serialisable `content` (key order does not matter)."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """
    Yield a temporary sibling of `final` to write into; it is renamed to `final` when the block succeeds and removed
    when it fails. If another process finished `final` first, its copy is kept and this one discarded.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        yield temporary
        try:
            os.replace(temporary, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
