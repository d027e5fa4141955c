"""Point-cloud data sets: Cap3D captions of Objaverse objects and Cap3D-QA (X-InstructBLIP's questions on them)."""

from collections import Counter
from pathlib import Path

from ..media import convert_point_cloud
from .core import (
    DEFAULT_QA_INSTRUCTION,
    ConversionPlan,
    Group,
    optional_source_file,
    qa_prompt,
    read_csv_rows,
    sample,
    source_dir,
    source_file,
)

CAP3D_FORMAT = "Cap3D CSV without a header, one object per row: uid, caption (Cap3D_automated_Objaverse.csv)"
CAP3D_QA_FORMAT = (
    "Cap3D-QA CSV (X-InstructBLIP's CAP3DQA_final.csv, written by pandas) with at least the columns sample_id "
    "(the Objaverse uid), question, answer"
)
CAPTION_FILES = [
    "Cap3D_automated_Objaverse.csv",
    "Cap3D_automated_Objaverse_full.csv",
    "Cap3D_automated_Objaverse_no3Dword.csv",
    "Cap3D_automated_Objaverse_full_no3Dword.csv",
]
# How released clouds are laid out: Cap3D's PointCloud_zips (.ply) and PointCloud_pt_zips (.pt), numpy exports,
# and LAVIS/X-InstructBLIP's objaverse_pc_parallel folders.
CLOUD_TEMPLATES = ("{uid}.ply", "{uid}.pt", "{uid}.npy", "{uid}.npz", "{uid}/{uid}_8192.npz")
NEEDS_CONVERSION = (".ply", ".pt")


class CloudLocator:
    """Where an object's cloud is: a fixed `template`, or the first of `CLOUD_TEMPLATES` that matches a file."""

    def __init__(self, folder: Path, template: str | None):
        self.folder = folder
        self.template = template

    def __call__(self, uid: str) -> Path:
        if self.template is None:
            for template in CLOUD_TEMPLATES:
                if (self.folder / template.format(uid=uid)).is_file():
                    self.template = template
                    break
            else:
                return self.folder / CLOUD_TEMPLATES[0].format(uid=uid)
        return self.folder / self.template.format(uid=uid)


def _cloud_step(max_points: int, seed: int):
    """PLY and .pt clouds (and every cloud, when sub-sampling) become .npy under `<out>/point_clouds`."""

    def step(media: str, out: Path) -> str:
        if not max_points and not media.lower().endswith(NEEDS_CONVERSION):
            return media
        name = Path(media).stem if not media.endswith("_8192.npz") else Path(media).parent.name
        folder = f"point_clouds_{max_points}" if max_points else "point_clouds"
        return str(convert_point_cloud(media, out / folder / f"{name}.npy", max_points or None, seed))

    return step


def convert_cap3d(
    data_root: Path,
    captions: str | None = None,
    point_dir: str = "point_clouds",
    cloud_template: str | None = None,
    max_caption_chars: int = 100,
    max_points: int = 0,
    prompt: str = "Describe the 3D object in one sentence.",
) -> ConversionPlan:
    """
    Cap3D: objects whose caption has at most `max_caption_chars` characters (the paper: 100 letters), then a seeded
    50K training subset and 1K held-out test objects (disjoint).

    Files: `captions` (default the first of Cap3D_automated_Objaverse.csv, ..._full.csv, ..._no3Dword.csv,
    ..._full_no3Dword.csv; no header: uid, caption) and clouds under `point_dir` named by `cloud_template` (default:
    found among {uid}.ply, {uid}.pt, {uid}.npy, {uid}.npz, {uid}/{uid}_8192.npz). Objects whose cloud was not
    downloaded need --skip-missing-media. PLY/.pt clouds are converted to .npy under `--out`/point_clouds;
    `max_points` > 0 also sub-samples every cloud (seeded) to save disk.
    """
    caption_name = optional_source_file(data_root, captions, CAPTION_FILES) or CAPTION_FILES[0]
    caption_file = source_file(data_root, caption_name, "Cap3D", f"the captions ({CAP3D_FORMAT})")
    clouds = source_dir(data_root, point_dir)
    locate = CloudLocator(clouds, cloud_template)

    def groups(counts: Counter):
        for row in read_csv_rows(caption_file, (), "Cap3D", CAP3D_FORMAT, names=["uid", "caption"]):
            counts["objects"] += 1
            uid, caption = row["uid"].strip(), row["caption"].strip()
            if not caption or len(caption) > max_caption_chars:
                continue
            counts[f"caption <= {max_caption_chars} characters"] += 1
            item = sample(f"cap3d-{uid}", "point_cloud", locate(uid), prompt, caption, "caption", "Cap3D")
            yield Group(key=uid, train=[item], test=item)

    return ConversionPlan(
        dataset="Cap3D",
        modality="point_cloud",
        task="caption",
        format=CAP3D_FORMAT,
        sources={"captions": str(caption_file), "point_clouds": str(clouds)},
        train_groups=groups,
        default_train_size=50_000,
        media_step=_cloud_step(max_points, seed=0),
        notes=["'letters' of the paper's caption filter are read as characters of the stripped caption"],
        options={"max_caption_chars": max_caption_chars, "cloud_template": cloud_template, "max_points": max_points},
    )


def _cap3d_qa_groups(path: Path, locate: CloudLocator, instruction: str):
    def groups(counts: Counter):
        for number, row in enumerate(
            read_csv_rows(path, ("sample_id", "question", "answer"), "Cap3D-QA", CAP3D_QA_FORMAT)
        ):
            counts["questions"] += 1
            uid, question, answer = row["sample_id"].strip(), row["question"].strip(), row["answer"].strip()
            if not (uid and question and answer):
                counts["rows with an empty sample_id, question or answer (dropped)"] += 1
                continue
            item = sample(
                f"cap3d_qa-{number}",
                "point_cloud",
                locate(uid),
                qa_prompt(question, instruction),
                answer,
                "qa",
                "Cap3D-QA",
            )
            # Held out, whole objects go to the test set: no object has questions in both sets.
            yield Group(key=uid, train=[item], test=item)

    return groups


def convert_cap3d_qa(
    data_root: Path,
    qa: str = "CAP3DQA_final.csv",
    test: str | None = None,
    point_dir: str = "point_clouds",
    cloud_template: str | None = None,
    max_points: int = 0,
    qa_instruction: str = DEFAULT_QA_INSTRUCTION,
) -> ConversionPlan:
    """
    Cap3D-QA: a seeded 30K subset of the questions for training; the test set is 1K objects with one question each,
    from `test` (default CAP3DQA_final_val.csv if present) or held out of `qa` (then none of their questions trains).

    Files: `qa` / `test` (Cap3D-QA CSV) and clouds as for `cap3d` (`point_dir`, `cloud_template`, `max_points`).
    """
    qa_file = source_file(data_root, qa, "Cap3D-QA", f"the questions ({CAP3D_QA_FORMAT})")
    clouds = source_dir(data_root, point_dir)
    locate = CloudLocator(clouds, cloud_template)
    test_name = optional_source_file(data_root, test, ["CAP3DQA_final_val.csv"])
    sources = {"qa": str(qa_file), "point_clouds": str(clouds)}
    test_groups = None
    if test_name:
        test_file = source_file(data_root, test_name, "Cap3D-QA", f"the test questions ({CAP3D_QA_FORMAT})")
        sources["test"] = str(test_file)
        test_groups = _cap3d_qa_groups(test_file, locate, qa_instruction)
    return ConversionPlan(
        dataset="Cap3D-QA",
        modality="point_cloud",
        task="qa",
        format=CAP3D_QA_FORMAT,
        sources=sources,
        train_groups=_cap3d_qa_groups(qa_file, locate, qa_instruction),
        test_groups=test_groups,
        default_train_size=30_000,
        media_step=_cloud_step(max_points, seed=0),
        options={"cloud_template": cloud_template, "max_points": max_points},
    )
