"""MLLM-CL's released domain and ability data (Zhao et al., 2025), as downloaded: one folder per task."""

from pathlib import Path

from .core import ConversionPlan, source_file
from .llava import LLAVA_FORMAT, _llava_groups

# The tasks in MLLM-CL's training order. Domain data: <root>/<task>/{images/, train.json, test.json}; ability data:
# <root>/<task>/{images/, train.json} and <root>/<task>_test/{images/, test.json}. Image paths are relative to the
# JSON file's folder (MLLM-CL's training scripts pass the task folder as --image_folder).
MLLM_CL_TASKS = {
    "domain": ("RS", "Med", "AD", "Sci", "Fin"),
    "ability": ("OCR", "Math", "VP", "APP"),
}


def convert_mllm_cl(data_root: Path, task: str | None = None, dataset: str | None = None) -> ConversionPlan:
    """
    One task of MLLM-CL's domain (RS, Med, AD, Sci, Fin) or ability (OCR, Math, VP, APP) data, as downloaded.

    `data_root` is the track's folder (holding RS/, Med/, ... or OCR/, OCR_test/, ...) with `task` naming the task,
    or the task's own folder (then `task` defaults to its name). Files: `<task>/train.json` (LLaVA conversations),
    `<task>/test.json` or `<task>_test/test.json` (conversations, or {"question_id", "image", "text", "answer"});
    image paths are relative to each JSON file's folder. Every row becomes one sample (a whole conversation, on the
    image modality, task "qa"), rows without an image included; the whole test file is the test set. `dataset`
    names the scored data set (default: the task's name).
    """
    data_root = Path(data_root)
    if task is None:
        if not (data_root / "train.json").is_file():
            raise ValueError(
                f"mllm_cl: {data_root} holds no train.json; give the track's folder and --option task=NAME (one of "
                f"{', '.join(t for tasks in MLLM_CL_TASKS.values() for t in tasks)}), or the task's own folder"
            )
        task_dir, task = data_root, data_root.resolve().name
    else:
        task_dir = data_root / task
    dataset = dataset or task
    name = task.lower()
    train_file = source_file(task_dir, "train.json", dataset, f"MLLM-CL's training rows ({LLAVA_FORMAT})")
    test_dirs = [task_dir, task_dir.with_name(f"{task_dir.name}_test")]
    test_dir = next((folder for folder in test_dirs if (folder / "test.json").is_file()), None)
    if test_dir is None:
        raise FileNotFoundError(
            f"{dataset}: expected MLLM-CL's test rows at {test_dirs[0] / 'test.json'} (domain data) or "
            f"{test_dirs[1] / 'test.json'} (ability data), but neither exists"
        )
    test_file = test_dir / "test.json"
    return ConversionPlan(
        dataset=dataset,
        modality="image",
        task="qa",
        format=f"MLLM-CL task folder: train.json and test.json, {LLAVA_FORMAT}; image paths relative to the JSON file",
        sources={"train": str(train_file), "test": str(test_file)},
        train_groups=_llava_groups(train_file, task_dir, "image", dataset, "qa", name),
        test_groups=_llava_groups(test_file, test_dir, "image", dataset, "qa", f"{name}-test"),
        default_test_size=None,
        options={"task": task},
    )
