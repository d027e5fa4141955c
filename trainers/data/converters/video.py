"""Video data sets: MSVD captions (Microsoft Research Video Description corpus) and MSVD-QA."""

from collections import Counter
from pathlib import Path

from ..media import extract_frames
from .core import (
    DEFAULT_QA_INSTRUCTION,
    ConversionPlan,
    Group,
    optional_source_file,
    qa_prompt,
    read_csv_rows,
    read_json,
    require_keys,
    sample,
    source_dir,
    source_file,
)

MSVD_FORMAT = (
    "the MSVD corpus: the original CSV (video_corpus.csv: VideoID, Start, End, ..., Language, Description) or a text "
    "file of 'CLIP caption' lines (annotations.txt / AllVideoDescriptions.txt), clips named VideoID_Start_End"
)
MAPPING_FORMAT = "youtube_mapping.txt: lines 'CLIP vidN' (MSVD-QA's and Youtube2Text's standard clip numbering)"
MSVD_QA_FORMAT = 'MSVD-QA JSON: [{"id", "video_id" (N of vidN), "question", "answer"}] (train_qa.json, test_qa.json)'
# The standard split of the numbered clips (Venugopalan et al.; MSVD-QA): 1-1200 train, 1201-1300 val, the rest test.
TRAIN_LAST, VALIDATION_LAST = 1200, 1300


def read_msvd_captions(path: Path, language: str, counts: Counter) -> dict[str, list[str]]:
    """clip name -> its captions, in file order."""
    captions: dict[str, list[str]] = {}
    if path.suffix.lower() == ".csv":
        required = ("VideoID", "Start", "End", "Language", "Description")
        for row in read_csv_rows(path, required, "MSVD", MSVD_FORMAT):
            counts["caption rows"] += 1
            text = (row["Description"] or "").strip()
            if row["Language"].strip() != language or not text:
                continue
            clip = f"{row['VideoID'].strip()}_{int(float(row['Start']))}_{int(float(row['End']))}"
            captions.setdefault(clip, []).append(text)
        counts[f"captions in {language}"] += sum(len(texts) for texts in captions.values())
        return captions
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(maxsplit=1)
            if len(parts) < 2:
                raise ValueError(
                    f"{path}, line {number}: expected 'CLIP caption', got {line!r}; MSVD expects {MSVD_FORMAT}"
                )
            captions.setdefault(parts[0], []).append(parts[1])
            counts["caption lines"] += 1
    return captions


def read_mapping(path: Path) -> dict[str, int]:
    """clip name -> N of its 'vidN' number."""
    mapping = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].startswith("vid") or not parts[1][3:].isdigit():
                raise ValueError(
                    f"{path}, line {number}: expected 'CLIP vidN', got {line.strip()!r}; {MAPPING_FORMAT}"
                )
            mapping[parts[0]] = int(parts[1][3:])
    return mapping


def _frames_step(frames: int):
    if frames <= 0:
        return None
    return lambda media, out: str(
        extract_frames(media, out / f"video_frames_{frames}" / f"{Path(media).stem}.npy", frames)
    )


def convert_msvd(
    data_root: Path,
    captions: str | None = None,
    mapping: str | None = None,
    video_dir: str = "YouTubeClips",
    video_ext: str = ".avi",
    language: str = "English",
    frames: int = 0,
    prompt: str = "Describe the video in one sentence.",
) -> ConversionPlan:
    """
    MSVD captions: one training sample per caption of the 1,200 training clips (about 48K); the test set is the 670
    test clips, each with all its captions as references.

    Files: `captions` (default: the first of video_corpus.csv, "MSR Video Description Corpus.csv", annotations.txt,
    AllVideoDescriptions.txt; CSV rows are kept when Language == `language`), `mapping` (youtube_mapping.txt, for the
    standard split; without it 670 clips are held out by seed), clips at `video_dir`/CLIP`video_ext`. `frames` > 0
    also decodes that many frames per clip to .npy with PyAV.
    """
    candidates = [
        "video_corpus.csv",
        "MSR Video Description Corpus.csv",
        "annotations.txt",
        "AllVideoDescriptions.txt",
    ]
    caption_name = optional_source_file(data_root, captions, candidates) or candidates[0]
    caption_file = source_file(data_root, caption_name, "MSVD", f"the captions ({MSVD_FORMAT})")
    mapping_name = optional_source_file(data_root, mapping, ["youtube_mapping.txt"])
    mapping_file = source_file(data_root, mapping_name, "MSVD", MAPPING_FORMAT) if mapping_name else None
    videos = source_dir(data_root, video_dir)

    def groups(split: str):
        def generate(counts: Counter):
            clips = read_msvd_captions(caption_file, language, counts)
            numbers = read_mapping(mapping_file) if mapping_file else None
            for clip, texts in clips.items():
                if numbers is not None:
                    number = numbers.get(clip)
                    if number is None:
                        counts["clips not in youtube_mapping.txt (dropped)"] += 1
                        continue
                    clip_split = "train" if number <= TRAIN_LAST else "val" if number <= VALIDATION_LAST else "test"
                    if clip_split != split:
                        continue
                counts["clips"] += 1
                media = videos / f"{clip}{video_ext}"
                train = [
                    sample(f"msvd-{clip}-{index}", "video", media, prompt, text, "caption", "MSVD")
                    for index, text in enumerate(texts)
                ]
                test = sample(f"msvd-{clip}", "video", media, prompt, texts[0], "caption", "MSVD", references=texts)
                yield Group(key=clip, train=train, test=test)

        return generate

    sources = {"captions": str(caption_file), "videos": str(videos)}
    notes = ["train: every caption of a training clip; test: one sample per clip, all its captions as references"]
    if mapping_file:
        sources["mapping"] = str(mapping_file)
        notes.append(
            "standard split by youtube_mapping.txt: vid1-1200 train, vid1201-1300 (validation) unused, rest test"
        )
    else:
        notes.append("no youtube_mapping.txt: the test clips are drawn by seed, not the standard 670-clip split")
    return ConversionPlan(
        dataset="MSVD",
        modality="video",
        task="caption",
        format=MSVD_FORMAT,
        sources=sources,
        train_groups=groups("train"),
        test_groups=groups("test") if mapping_file else None,
        default_test_size=670,
        media_step=_frames_step(frames),
        notes=notes,
        options={"frames": frames, "language": language},
    )


def _msvd_qa_groups(path: Path, mapping_file: Path, videos: Path, video_ext: str, instruction: str):
    def groups(counts: Counter):
        clips = {number: clip for clip, number in read_mapping(mapping_file).items()}
        records = read_json(path, "MSVD-QA", MSVD_QA_FORMAT)
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of questions; MSVD-QA expects {MSVD_QA_FORMAT}")
        counts["questions"] += len(records)
        for index, record in enumerate(records):
            require_keys(
                record, ("id", "video_id", "question", "answer"), path, f"item {index}", "MSVD-QA", MSVD_QA_FORMAT
            )
            clip = clips.get(int(record["video_id"]))
            if clip is None:
                counts["video_id not in youtube_mapping.txt (dropped)"] += 1
                continue
            prompt = qa_prompt(record["question"], instruction)
            item = sample(
                f"msvd_qa-{record['id']}",
                "video",
                videos / f"{clip}{video_ext}",
                prompt,
                str(record["answer"]).strip(),
                "qa",
                "MSVD-QA",
            )
            yield Group(key=str(record["id"]), train=[item], test=item)

    return groups


def convert_msvd_qa(
    data_root: Path,
    train: str = "train_qa.json",
    test: str | None = None,
    mapping: str = "youtube_mapping.txt",
    video_dir: str = "YouTubeClips",
    video_ext: str = ".avi",
    frames: int = 0,
    qa_instruction: str = DEFAULT_QA_INSTRUCTION,
) -> ConversionPlan:
    """
    MSVD-QA: one sample per question (about 30K for training); the test set is 1K questions of `test` (default
    test_qa.json if present, else held out of the training questions).

    Files: `train` / `test` (MSVD-QA JSON lists), `mapping` (youtube_mapping.txt: video_id N is clip 'vidN'), clips at
    `video_dir`/CLIP`video_ext`. `frames` > 0 also decodes that many frames per clip to .npy with PyAV.
    """
    train_file = source_file(data_root, train, "MSVD-QA", f"the training questions ({MSVD_QA_FORMAT})")
    mapping_file = source_file(data_root, mapping, "MSVD-QA", MAPPING_FORMAT)
    videos = source_dir(data_root, video_dir)
    test_name = optional_source_file(data_root, test, ["test_qa.json"])
    sources = {"train": str(train_file), "mapping": str(mapping_file), "videos": str(videos)}
    test_groups = None
    if test_name:
        test_file = source_file(data_root, test_name, "MSVD-QA", f"the test questions ({MSVD_QA_FORMAT})")
        sources["test"] = str(test_file)
        test_groups = _msvd_qa_groups(test_file, mapping_file, videos, video_ext, qa_instruction)
    return ConversionPlan(
        dataset="MSVD-QA",
        modality="video",
        task="qa",
        format=MSVD_QA_FORMAT,
        sources=sources,
        train_groups=_msvd_qa_groups(train_file, mapping_file, videos, video_ext, qa_instruction),
        test_groups=test_groups,
        media_step=_frames_step(frames),
        options={"frames": frames},
    )
