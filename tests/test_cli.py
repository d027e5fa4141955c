"""The `mera` console command: help of every sub-command and recipe file, and `mera info` on a saved checkpoint."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import build_tiny_model

from recipes.cli import main

ROOT = Path(__file__).resolve().parents[1]


def mera_command() -> list[str]:
    found = shutil.which("mera")
    return [found] if found else [sys.executable, "-m", "recipes.cli"]


def test_mera_help_lists_subcommands():
    result = subprocess.run([*mera_command(), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: mera" in result.stdout and "info" in result.stdout


def test_mera_info_reads_a_checkpoint(tmp_path, capsys):
    build_tiny_model(("image", "audio", "point_cloud")).save_pretrained(tmp_path)
    assert main(["info", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in summary["modalities"]] == ["image", "audio", "point_cloud"]
    assert [m["tokens_per_item"] for m in summary["modalities"]] == [16, 4, 9]
    assert [m["connector"] for m in summary["modalities"]] == ["mlp", "qformer", "mlp"]
    assert main(["info", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "whisper" in table and "mera_point_bert" in table


def test_mera_info_on_a_folder_without_config(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_help_of_every_command_and_recipe_file_exits_0():
    """`mera --help`, `mera COMMAND --help` for every sub-command, `python recipes/FILE.py --help` for every file."""
    from recipes.cli import COMMANDS

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    commands = [[*mera_command(), "--help"]] + [[*mera_command(), name, "--help"] for name in COMMANDS]
    files = sorted(path for path in (ROOT / "recipes").glob("*.py") if path.name != "__init__.py")
    commands += [[sys.executable, str(path), "--help"] for path in files]
    assert {path.stem for path in files} == {*COMMANDS, "cli"}  # every recipe is a sub-command
    running = [(command, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env=env, cwd=ROOT)) for command in commands]  # fmt: skip
    for command, process in running:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{' '.join(command)}: {stderr[-2000:]}"
        assert stdout.startswith("usage: "), f"{' '.join(command)}: {stdout[:200]}"


HEAVY_LIBRARIES = ("torch", "transformers", "datasets", "peft", "accelerate", "evaluate")
IMPORTED_BY_HELP = """
import json, sys
from recipes.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(os.environ["HEAVY"])))
print(json.dumps(heavy), file=sys.stderr)
"""


def test_help_loads_no_heavy_library():
    """`--help` stays fast (about 1 s here) because no command imports torch or the HF libraries to describe itself."""
    from recipes.cli import COMMANDS

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HEAVY": json.dumps(HEAVY_LIBRARIES)}
    for arguments in [["--help"]] + [[name, "--help"] for name in COMMANDS]:
        result = subprocess.run(
            [sys.executable, "-c", "import os\n" + IMPORTED_BY_HELP, *arguments],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
        )  # fmt: skip
        assert result.stdout.startswith("usage: "), result.stderr[-2000:]
        assert json.loads(result.stderr.strip().splitlines()[-1]) == [], (arguments, result.stderr[-300:])
