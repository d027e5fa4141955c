"""
Publishing stages on the Hub and loading them back by repo id.

The Hub cannot be reached here: `tests/local_hub.py` serves the Hub's HTTP endpoints on 127.0.0.1 with git-like
state, and is the only stand-in. Everything else is the real code path: the continual recipe with --push_to_hub,
`mera push`, HfApi's commit and LFS protocols, snapshot_download writing the Hugging Face cache, and
from_pretrained(repo_id, revision=...) in a fresh process that runs offline and may not import this project.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REFUSE_PROJECT_IMPORTS, write_tiny_run
from huggingface_hub import HfApi, ModelCard, constants
from local_hub import LocalHub
from safetensors.torch import load_file, save_file

from modeling_mera import MeraForCausalLM, MeraProcessor
from recipes.cli import main as cli_main
from trainers.evaluation.metrics import ScoreMatrix, summarize
from trainers.hub import HubPushError, HubRevisionExistsError, plan_stage_upload, push_run

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_local_write_token"
REPO = "org/mera-tiny"
CODE = ["beats.py", "configuration_mera.py", "connectors.py", "encoders.py", "key_mapping.py", "modeling_mera.py"]
CODE += ["processing_mera.py"]
COMMON = ["config.json", "generation_config.json", "processor_config.json", "chat_template.jinja", "stage.json"]
COMMON += ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md", "scores.json", *CODE]
STAGE_FILES = {"stage-1": sorted(COMMON), "stage-2": sorted(COMMON)}  # every modality's processor in one file


def hub_env(tmp: Path, hub: LocalHub | None = None, **extra) -> dict:
    """A clean environment: its own HF home, cache and modules cache; online only towards the local hub."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp),
        "PYTHONPATH": str(ROOT),
        "HF_HOME": str(tmp / "hf_home"),
        "HF_HUB_CACHE": str(tmp / "hub_cache"),
        "HF_MODULES_CACHE": str(tmp / "modules"),
        "HF_HUB_DISABLE_XET": "1",  # the local hub speaks the plain LFS protocol
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    if hub is not None:
        env.update({"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0"})
    else:
        env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A 2-stage tiny MERA run trained with `recipes/continual.py --push_to_hub true --hub_model_id REPO`, its first
    commit failing once."""
    tmp = tmp_path_factory.mktemp("published")
    config = write_tiny_run(tmp, modalities=("image", "audio"))
    with LocalHub() as hub:
        hub.fail_commits = 1
        command = [sys.executable, str(ROOT / "recipes" / "continual.py"), "--config", str(config)]
        command += ["--push_to_hub", "true", "--hub_model_id", REPO, "--hub_private_repo", "true"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=hub_env(tmp, hub))
        assert result.returncode == 0, result.stderr[-3000:]
        yield {"hub": hub, "run": tmp / "run", "tmp": tmp, "output": result.stdout + result.stderr}


def test_continual_run_pushes_each_stage_to_its_branch(published):
    hub, run = published["hub"], published["run"]
    repo = hub.repos[REPO]
    assert repo.private, "--hub_private_repo true creates a private repo"
    assert set(repo.branches) == {"main", "stage-1", "stage-2"}
    for branch, expected in STAGE_FILES.items():
        files = hub.files(REPO, branch)
        assert sorted(set(files) - {".gitattributes"}) == expected, "each branch holds its stage folder, no replay/"
        stage_dir = run / branch
        for name in expected:
            if name not in ("README.md", "scores.json"):
                assert files[name] == (stage_dir / name).read_bytes(), f"{branch}/{name} differs from the checkpoint"
        assert json.loads(files["config.json"])["auto_map"]["AutoModel"] == "modeling_mera.MeraForCausalLM"
    assert hub.files(REPO, "main") == hub.files(REPO, "stage-2"), "main follows the latest stage"
    assert hub.files(REPO, "stage-1")["model.safetensors"] != hub.files(REPO, "stage-2")["model.safetensors"]

    # Stage branches grow from each other; the first stage-1 commit failed once (HTTP 500) and was retried.
    assert hub.failed_commits == 1 and "retry 1/3" in published["output"]
    messages = [commit.message for commit in repo.history("stage-2")]
    assert messages == [
        "initial commit",
        "Stage 1: image (learnt image)",
        "Stage 2: image → audio (learnt audio)",
        "Update stage-2: same weights",
    ]
    # Pushed as each stage finished, before the experts existed; the cards got their Relative Gain at the end.
    first_push, head = repo.history("stage-1")[1], repo.commits[repo.branches["stage-1"]]
    first_card, last_card = (commit.files["README.md"].content.decode() for commit in (first_push, head))
    assert "Relative Gain needs the scores of the single-modality experts" in first_card
    assert "| modality | after stage 1 |" in last_card and "Relative Gain needs" not in last_card

    record = json.loads((run / "pushed.json").read_text())[REPO]
    assert {branch: entry["commit"] for branch, entry in record.items()} == repo.branches
    assert TOKEN not in published["output"], "the token is never printed"
    assert all(TOKEN not in path.read_text() for path in run.glob("*.json")), "nor written into the run folder"


def test_stage_scores_and_model_card_carry_the_relative_gain(published):
    files = {branch: published["hub"].files(REPO, branch) for branch in ("stage-1", "stage-2")}
    run_scores = json.loads((published["run"] / "scores.json").read_text())
    expected = summarize(ScoreMatrix.from_dict(run_scores))["relative_gain"]
    image_sets = run_scores["modalities"][0]["datasets"]
    stage_1_scores = json.loads(files["stage-1"]["scores.json"])
    assert stage_1_scores == {
        "method": "mera",
        "modalities": run_scores["modalities"][:1],
        "experts": {name: run_scores["experts"][name] for name in image_sets},
        "stages": run_scores["stages"][:1],
    }
    assert json.loads(files["stage-2"]["scores.json"]) == run_scores

    text = files["stage-2"]["README.md"].decode()
    card = ModelCard(text)
    assert card.data.model_name == "mera-tiny (stage 2)"
    assert card.data.library_name == "transformers" and "mera" in card.data.tags
    gains = {r.dataset_type: r.metric_value for r in card.data.eval_results if r.metric_type == "relative_gain"}
    assert gains == {
        "mera-mcl/image": round(expected["image"][1], 2),
        "mera-mcl/audio": round(expected["audio"][1], 2),
    }
    raw = {r.dataset_name: r.metric_value for r in card.data.eval_results if r.metric_type != "relative_gain"}
    assert raw == {name: round(score, 4) for name, score in run_scores["stages"][1].items()}
    assert "image → audio" in text and "the method **mera**" in text
    assert "| modality | after stage 1 | after stage 2 |" in text
    assert f"| image | {expected['image'][0]:.2f} | {expected['image'][1]:.2f} |" in text
    assert 'AutoModel.from_pretrained("org/mera-tiny", revision="stage-2", trust_remote_code=True)' in text
    assert "| 2 | `audio` | audio | `whisper` | qformer | 4 | `<audio>` |" in text

    stage_1 = ModelCard(files["stage-1"]["README.md"].decode())
    assert [r.metric_value for r in stage_1.data.eval_results if r.metric_type == "relative_gain"] == [
        round(expected["image"][0], 2)
    ]


LOAD_BY_REPO_ID = (
    REFUSE_PROJECT_IMPORTS
    + """
import inspect, json, sys, torch
from transformers import AutoModel, AutoModelForCausalLM
folder = sys.argv[1]
inputs = torch.load(folder + "/inputs.pt")
for revision in ("stage-1", "stage-2", "main"):
    for auto_class in (AutoModel, AutoModelForCausalLM):
        model = auto_class.from_pretrained("org/mera-tiny", revision=revision, trust_remote_code=True).eval()
        with torch.no_grad():
            torch.save(model(**inputs).logits, f"{folder}/loaded-{revision}-{auto_class.__name__}.pt")
        code = inspect.getfile(type(model))
        print(json.dumps({"revision": revision, "class": type(model).__name__, "code": code,
                          "modalities": list(model.config.modalities)}))
"""
)

LOAD_PROCESSOR = """
import json, sys
from modeling_mera import MeraProcessor
for revision in ("stage-1", "stage-2"):
    processor = MeraProcessor.from_pretrained("org/mera-tiny", revision=revision)
    print(json.dumps({"revision": revision, "processors": sorted(processor.modality_processors)}))
"""


def test_each_stage_loads_by_repo_id_offline_in_a_fresh_process(published, tmp_path):
    hub, run = published["hub"], published["run"]
    # 1. Download each revision as a user would; the cache is laid out by huggingface_hub itself.
    download = "from huggingface_hub import snapshot_download\n"
    download += "for r in ('stage-1', 'stage-2', 'main'): snapshot_download('org/mera-tiny', revision=r)\n"
    result = subprocess.run(
        [sys.executable, "-c", download], capture_output=True, text=True, timeout=300, env=hub_env(tmp_path, hub)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cache = tmp_path / "hub_cache" / "models--org--mera-tiny"
    commits = {ref.name: ref.read_text() for ref in (cache / "refs").iterdir()}
    assert commits == {branch: hub.repos[REPO].branches[branch] for branch in ("stage-1", "stage-2", "main")}

    # 2. The local checkpoints' logits on one image prompt.
    processor = MeraProcessor.from_pretrained(run / "stage-1")
    image = sorted((published["tmp"] / "data" / "image" / "test").glob("*.png"))[0]
    batch = processor(["<image> describe the image ."], media=[{"image": str(image)}])
    torch.save({**batch.data}, tmp_path / "inputs.pt")
    expected = {}
    for stage in ("stage-1", "stage-2"):
        with torch.no_grad():
            expected[stage] = MeraForCausalLM.from_pretrained(run / stage).eval()(**batch).logits
    expected["main"] = expected["stage-2"]
    assert (expected["stage-1"] - expected["stage-2"]).abs().max() > 1e-3, "the two stages are different models"

    # 3. A fresh process, offline, that cannot import the project, loads each revision by repo id.
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent(LOAD_BY_REPO_ID))
    env = hub_env(tmp_path)
    del env["PYTHONPATH"]
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(loaded) == 6
    for entry in loaded:
        revision = entry["revision"]
        assert entry["class"] == "MeraForCausalLM"
        assert commits[revision] in entry["code"], "the model code comes from the same revision as the weights"
        assert entry["modalities"] == (["image"] if revision == "stage-1" else ["image", "audio"])
    for revision in ("stage-1", "stage-2", "main"):
        for auto_class in ("AutoModel", "AutoModelForCausalLM"):
            logits = torch.load(tmp_path / f"loaded-{revision}-{auto_class}.pt")
            torch.testing.assert_close(logits, expected[revision], rtol=0, atol=1e-5)

    # 4. The processor of each stage, by repo id and revision, offline.
    result = subprocess.run(
        [sys.executable, "-c", LOAD_PROCESSOR], cwd=tmp_path, env=hub_env(tmp_path), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    processors = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert processors == [
        {"revision": "stage-1", "processors": ["image"]},
        {"revision": "stage-2", "processors": ["audio", "image"]},
    ]


@pytest.fixture
def local_api(monkeypatch):
    """An HfApi talking to a fresh local hub from this process (the suite runs offline towards anything else)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with LocalHub() as hub:
        yield hub, HfApi(endpoint=hub.url, token=TOKEN)


def copy_run(published, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(published["run"], run, ignore=shutil.ignore_patterns("pushed.json"))
    return run


def test_upload_plan_leaves_replay_out_unless_asked(published, tmp_path):
    run = copy_run(published, tmp_path)
    plan = plan_stage_upload(run, 2, "org/other")
    assert sorted(plan.files) == STAGE_FILES["stage-2"] and plan.branch == "stage-2"
    assert 'revision="stage-2"' in plan.files["README.md"].decode() and "org/other" in plan.files["README.md"].decode()
    with_replay = plan_stage_upload(run, 2, "org/other", include_replay=True)
    assert sorted(set(with_replay.files) - set(plan.files)) == [
        "replay/replay.json",
        "replay/stage-1.jsonl",
        "replay/stage-2.jsonl",
    ]
    assert "replay samples (`replay/`) are not published" not in with_replay.files["README.md"].decode()


def test_push_pushes_only_what_is_missing_and_retries(published, tmp_path, local_api):
    hub, api = local_api
    run = copy_run(published, tmp_path)
    weights = {stage: (run / stage / "model.safetensors").read_bytes() for stage in ("stage-1", "stage-2")}

    results = push_run(run, "org/again", stages=[1], api=api, backoff=0)
    assert [(r["branch"], r["status"]) for r in results] == [("stage-1", "pushed"), ("main", "pushed")]
    assert hub.files("org/again", "main") == hub.files("org/again", "stage-1"), "main follows the latest pushed"
    assert not hub.repos["org/again"].private, "a repo is public unless asked"

    hub.fail_commits = 10  # the Hub is down: every commit fails
    with pytest.raises(HubPushError, match="mera push") as failure:
        push_run(run, "org/again", api=api, retries=2, backoff=0)
    assert hub.failed_commits == 2 * 3, "stage-2 and main: each tried once and retried twice"
    assert "stage-2" in str(failure.value) and "main" in str(failure.value)
    record = json.loads((run / "pushed.json").read_text())["org/again"]
    assert set(record) == {"stage-1", "main"} and record["main"]["stage"] == 1, "failures are not recorded"
    assert {stage: (run / stage / "model.safetensors").read_bytes() for stage in weights} == weights

    hub.fail_commits = 0
    commits_before = len(hub.commit_calls("org/again"))
    results = push_run(run, "org/again", api=api, backoff=0)
    assert [(r["branch"], r["status"]) for r in results] == [
        ("stage-1", "unchanged"),
        ("stage-2", "pushed"),
        ("main", "pushed"),
    ]
    assert [call["revision"] for call in hub.commit_calls("org/again")[commits_before:]] == ["stage-2", "main"]
    assert hub.files("org/again", "main") == hub.files("org/again", "stage-2")
    assert push_run(run, "org/again", api=api)[0]["status"] == "unchanged", "nothing left to push"

    wrong = HfApi(endpoint=hub.url, token="hf_not_a_token")
    with pytest.raises(HubPushError, match="401"):
        push_run(run, "org/denied", api=wrong, backoff=0)
    assert hub.failed_commits == 6 and "org/denied" not in hub.repos, "an authentication error is not retried"


def test_branch_holding_other_weights_is_not_overwritten_without_force(published, tmp_path, local_api):
    hub, api = local_api
    run = copy_run(published, tmp_path)
    push_run(run, "org/guarded", api=api, backoff=0)

    other = tmp_path / "other"  # another run whose stage 2 ended with other weights
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("pushed.json"))
    weights = load_file(other / "stage-2" / "model.safetensors")
    name = next(key for key in weights if key.startswith("model.connectors.audio"))
    weights[name] = weights[name] + 1.0
    save_file(weights, other / "stage-2" / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(HubRevisionExistsError, match="org/guarded@stage-2 already holds a different checkpoint"):
        push_run(other, "org/guarded", api=api, backoff=0)
    assert (
        hub.files("org/guarded", "stage-2")["model.safetensors"]
        == (run / "stage-2" / "model.safetensors").read_bytes()
    )

    push_run(other, "org/guarded", api=api, force=True, backoff=0)
    pushed = hub.files("org/guarded", "stage-2")["model.safetensors"]
    assert pushed == (other / "stage-2" / "model.safetensors").read_bytes()
    assert hub.commit_calls("org/guarded")[-2]["message"].endswith("overwriting other weights")


def test_mera_push_command(published, tmp_path, capsys):
    run = copy_run(published, tmp_path)
    mera = [sys.executable, "-m", "recipes.cli", "push"]
    result = subprocess.run([*mera, "--help"], capture_output=True, text=True, env=hub_env(tmp_path), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    for option in ("run_dir", "repo_id", "--stages", "--private", "--force", "--token", "--dry-run", "HF_TOKEN"):
        assert option in result.stdout

    assert cli_main(["push", str(run), "org/cli", "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "stage-2: Stage 2: image → audio (learnt audio)" in plan and "replay/" not in plan
    assert cli_main(["push", str(run), "org/cli", "--stages", "3"]) == 2
    assert "stage(s) [3] of" in capsys.readouterr().err

    with LocalHub() as hub:  # the console command as a user runs it, with HF_TOKEN in the environment
        command = [*mera, str(run), "org/cli", "--stages", "2", "--private"]
        result = subprocess.run(command, capture_output=True, text=True, env=hub_env(tmp_path, hub), cwd=ROOT)
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"{hub.url}/org/cli/tree/stage-2" in result.stdout and TOKEN not in result.stdout + result.stderr
        assert hub.repos["org/cli"].private and set(hub.repos["org/cli"].branches) == {"main", "stage-2"}
        assert sorted(set(hub.files("org/cli", "stage-2")) - {".gitattributes"}) == STAGE_FILES["stage-2"]


# --- re-push after partial failures (issue 17) -------------------------------------------------------------------
def four_stage_run(published, tmp_path) -> Path:
    """The published 2-stage run plus stages 3 and 4: copies of stage 2 with other weights and their own
    stage.json (enough to publish; their scores are left out, as for a stage not evaluated yet)."""
    run = copy_run(published, tmp_path)
    for stage in (3, 4):
        folder = run / f"stage-{stage}"
        shutil.copytree(run / "stage-2", folder)
        weights = load_file(folder / "model.safetensors")
        name = next(key for key in weights if key.startswith("model.connectors.audio"))
        weights[name] = weights[name] + stage
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        info = json.loads((folder / "stage.json").read_text())
        (folder / "stage.json").write_text(json.dumps({**info, "stage": stage}, indent=2) + "\n")
    return run


def assert_branches_hold_their_own_stage(hub: LocalHub, repo: str, run: Path):
    """Every stage-k branch on the hub holds stage k's weights; main holds the latest stage's."""
    branches = hub.repos[repo].branches
    for branch in branches:
        if branch == "main":
            continue
        files = hub.files(repo, branch)
        assert files["model.safetensors"] == (run / branch / "model.safetensors").read_bytes(), branch
        assert files["stage.json"] == (run / branch / "stage.json").read_bytes(), branch
    latest = max(int(branch.split("-")[1]) for branch in branches if branch != "main")
    assert hub.files(repo, "main")["model.safetensors"] == (run / f"stage-{latest}" / "model.safetensors").read_bytes()


def test_repush_after_an_outage_during_stage_3_converges(published, tmp_path, local_api):
    # The old code created stage-3 and stage-4 before their commits landed; after the outage stage-4 held stage 2's
    # model and every later `mera push` refused it ("already holds a different checkpoint").
    hub, api = local_api
    run = four_stage_run(published, tmp_path)
    push_run(run, "org/outage", stages=[1, 2], api=api, backoff=0)

    hub.fail_next = {"commit": 100, "delete_branch": 100}  # the Hub answers 503 to every write
    with pytest.raises(HubPushError, match="stage-3"):
        push_run(run, "org/outage", api=api, retries=1, backoff=0)
    # The branches could not be deleted either: they hold stage 2, which the next push recognises by content.
    assert {"stage-3", "stage-4"} <= set(hub.repos["org/outage"].branches)

    hub.fail_next = {}
    results = push_run(run, "org/outage", api=api, backoff=0)
    assert {r["branch"]: r["status"] for r in results} == {
        "stage-1": "unchanged", "stage-2": "unchanged", "stage-3": "pushed", "stage-4": "pushed", "main": "pushed"
    }  # fmt: skip
    assert_branches_hold_their_own_stage(hub, "org/outage", run)
    assert {r["status"] for r in push_run(run, "org/outage", api=api)} == {"unchanged"}


def test_a_failed_commit_leaves_no_branch_behind(published, tmp_path, local_api):
    hub, api = local_api
    run = four_stage_run(published, tmp_path)
    push_run(run, "org/clean", stages=[1, 2], api=api, backoff=0)
    hub.fail_next = {"commit": 2}  # stage-3's commit and its one retry fail; the Hub then recovers
    with pytest.raises(HubPushError, match="stage-3"):
        push_run(run, "org/clean", api=api, retries=1, backoff=0)
    # stage-3 does not exist (deleted after its failed commit); stage-4 started from main and holds stage 4.
    assert "stage-3" not in hub.repos["org/clean"].branches
    assert_branches_hold_their_own_stage(hub, "org/clean", run)

    push_run(run, "org/clean", api=api, backoff=0)
    assert set(hub.repos["org/clean"].branches) == {"main", "stage-1", "stage-2", "stage-3", "stage-4"}
    assert_branches_hold_their_own_stage(hub, "org/clean", run)


def test_a_branch_moved_on_the_hub_is_pushed_again(published, tmp_path, local_api):
    # pushed.json alone is not proof: the branch's head must still be the recorded commit.
    hub, api = local_api
    run = copy_run(published, tmp_path)
    push_run(run, "org/moved", api=api, backoff=0)
    repo = hub.repos["org/moved"]
    repo.branches["stage-2"] = repo.branches["stage-1"]  # someone reset the branch to stage 1's commit
    results = {r["branch"]: r["status"] for r in push_run(run, "org/moved", api=api, backoff=0)}
    assert results["stage-2"] == "pushed"
    assert_branches_hold_their_own_stage(hub, "org/moved", run)


def test_card_reports_judge_failures_and_no_local_folder(published, tmp_path):
    # The old cards said nothing about failed verdicts and published the folders the LLM was loaded from.
    from trainers.hub import render_model_card

    run = copy_run(published, tmp_path)
    text = str(render_model_card(run, 2, "org/x"))
    assert "After stage 2, judge failures: none" in text
    assert str(published["tmp"]) not in text and "a local checkpoint" in text
    for name in ("config.json", "stage.json"):
        assert str(published["tmp"]) not in (run / "stage-2" / name).read_text(), name

    evaluation_file = run / "eval" / "stage-2.json"
    evaluation = json.loads(evaluation_file.read_text())
    qa = next(name for name, detail in evaluation["datasets"].items() if detail["task"] == "qa")
    evaluation["datasets"][qa]["num_failures"] = 1
    evaluation_file.write_text(json.dumps(evaluation))
    samples = evaluation["datasets"][qa]["num_samples"]
    assert f"judge failures (left out of the accuracy): {qa} 1/{samples}" in str(render_model_card(run, 2, "org/x"))


def test_a_smoke_test_runs_card_says_so(published, tmp_path):
    from trainers.hub.card import render_model_card, stage_score_matrix

    run = tmp_path / "run"
    shutil.copytree(published["run"], run)
    run_config = json.loads((run / "run_config.json").read_text())
    assert "Smoke test" not in render_model_card(run, 2, REPO).text
    (run / "run_config.json").write_text(json.dumps({**run_config, "smoke_test": True}))
    card = render_model_card(run, 2, REPO)
    assert "> **Smoke test — figures are not meaningful.**" in card.text and "smoke-test" in card.data.tags
    assert stage_score_matrix(run, 2)["smoke_test"] is True
