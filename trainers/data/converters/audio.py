"""Audio data sets: AudioCaps captions and Clotho-AQA questions (CSV files plus folders of audio clips)."""

from collections import Counter
from pathlib import Path

from ..media import transcode_audio
from .core import (
    DEFAULT_QA_INSTRUCTION,
    ConversionPlan,
    Group,
    most_frequent,
    optional_source_file,
    qa_prompt,
    read_csv_rows,
    sample,
    source_dir,
    source_file,
)

AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
AUDIOCAPS_FORMAT = "AudioCaps CSV with columns audiocap_id, youtube_id, start_time, caption (train.csv, test.csv)"
CLOTHO_COLUMNS = ("file_name", "QuestionText", "answer", "confidence")
CLOTHO_FORMAT = (
    "Clotho-AQA CSV with columns file_name, QuestionText, answer, confidence, one row per annotator "
    "(clotho_aqa_train.csv, clotho_aqa_test.csv)"
)


def _audio_step(sampling_rate: int | None):
    """Keep WAV files as they are (the processor resamples them); transcode anything else, or everything at a rate."""
    folder = f"audio_{sampling_rate}hz" if sampling_rate else "audio_wav"

    def step(media: str, out: Path) -> str:
        if not sampling_rate and media.lower().endswith(".wav"):
            return media
        parent = Path(media).parent.name
        return str(transcode_audio(media, out / folder / parent / f"{Path(media).stem}.wav", sampling_rate))

    return step


def _audiocaps_groups(path: Path, audio_dir: Path, template: str, prompt: str, split: str):
    def groups(counts: Counter):
        clips: dict[str, list[dict]] = {}
        for row in read_csv_rows(path, AUDIOCAPS_COLUMNS, "AudioCaps", AUDIOCAPS_FORMAT):
            counts["caption rows"] += 1
            caption = row["caption"].strip()
            if not caption:
                counts["empty captions (dropped)"] += 1
                continue
            media = audio_dir / template.format(**{key: row[key].strip() for key in AUDIOCAPS_COLUMNS[:3]})
            item = sample(
                f"audiocaps-{row['audiocap_id'].strip()}", "audio", media, prompt, caption, "caption", "AudioCaps"
            )
            if split == "train":
                yield Group(key=row["youtube_id"].strip(), train=[item], test=item)
            else:
                clips.setdefault(row["youtube_id"].strip(), []).append(item)
        # A test clip has several captions (one row each): one test sample per clip, all captions as references.
        for clip, items in clips.items():
            references = [item["answer"] for item in items]
            yield Group(key=clip, test={**items[0], "id": f"audiocaps-{clip}", "references": references})

    return groups


def convert_audiocaps(
    data_root: Path,
    train: str = "train.csv",
    test: str | None = None,
    audio_dir: str = "audio",
    test_audio_dir: str | None = None,
    audio_template: str = "{youtube_id}.wav",
    sampling_rate: int = 0,
    prompt: str = "Describe the sound in one sentence.",
) -> ConversionPlan:
    """
    AudioCaps: one training sample per caption row; the test set is 1K clips of `test` (default test.csv if present,
    else held out of train.csv), each clip with all its captions as references.

    Files: `train` / `test` (AudioCaps CSV); clips at `audio_dir` (`test_audio_dir`, default the same) named by
    `audio_template`, whose fields are the CSV's audiocap_id, youtube_id and start_time: e.g. "{youtube_id}.wav",
    "Y{youtube_id}.wav", "{audiocap_id}.wav" or "{youtube_id}_{start_time}.flac". Clips that could not be downloaded
    need --skip-missing-media. Non-WAV clips are transcoded to WAV with PyAV; `sampling_rate` > 0 resamples every
    clip to that rate once (e.g. 16000, the encoder's), instead of at every training step.
    """
    train_file = source_file(data_root, train, "AudioCaps", f"the training captions ({AUDIOCAPS_FORMAT})")
    audio = source_dir(data_root, audio_dir)
    test_audio = source_dir(data_root, test_audio_dir) if test_audio_dir else audio
    test_name = optional_source_file(data_root, test, ["test.csv"])
    sources = {"train": str(train_file), "audio": str(audio)}
    test_groups = None
    if test_name:
        test_file = source_file(data_root, test_name, "AudioCaps", f"the test captions ({AUDIOCAPS_FORMAT})")
        sources |= {"test": str(test_file), "test_audio": str(test_audio)}
        test_groups = _audiocaps_groups(test_file, test_audio, audio_template, prompt, "test")
    return ConversionPlan(
        dataset="AudioCaps",
        modality="audio",
        task="caption",
        format=AUDIOCAPS_FORMAT,
        sources=sources,
        train_groups=_audiocaps_groups(train_file, audio, audio_template, prompt, "train"),
        test_groups=test_groups,
        media_step=_audio_step(sampling_rate),
        options={"audio_template": audio_template, "sampling_rate": sampling_rate or None},
    )


def _clotho_groups(path: Path, audio_dir: Path, confidence: str, instruction: str, split: str):
    def groups(counts: Counter):
        questions: dict[tuple[str, str], list[str]] = {}
        for number, row in enumerate(read_csv_rows(path, CLOTHO_COLUMNS, "Clotho-AQA", CLOTHO_FORMAT), start=1):
            counts["answer rows"] += 1
            if confidence != "any" and row["confidence"].strip().lower() != confidence:
                continue
            counts[f"confidence == {confidence!r}"] += 1
            file_name, question, answer = row["file_name"].strip(), row["QuestionText"].strip(), row["answer"].strip()
            if split == "train":
                item = sample(
                    f"clotho_aqa-{number}",
                    "audio",
                    audio_dir / file_name,
                    qa_prompt(question, instruction),
                    answer,
                    "qa",
                    "Clotho-AQA",
                )
                # Held out (without a test file), whole clips go to the test set: no clip is in both.
                yield Group(key=file_name, train=[item], test=item)
            else:
                questions.setdefault((file_name, question), []).append(answer)
        # A test question was answered by three annotators: one sample, the most frequent confident answer first.
        for index, ((file_name, question), answers) in enumerate(questions.items()):
            answer = most_frequent(answers)
            others = list(answers)
            others.remove(answer)
            yield Group(
                key=f"{file_name}\x00{question}",
                test=sample(
                    f"clotho_aqa-test-{index}",
                    "audio",
                    audio_dir / file_name,
                    qa_prompt(question, instruction),
                    answer,
                    "qa",
                    "Clotho-AQA",
                    references=[answer, *others],
                ),
            )

    return groups


def convert_clotho_aqa(
    data_root: Path,
    train: str = "clotho_aqa_train.csv",
    test: str | None = None,
    audio_dir: str = "audio_files",
    confidence: str = "yes",
    sampling_rate: int = 0,
    qa_instruction: str = DEFAULT_QA_INSTRUCTION,
) -> ConversionPlan:
    """
    Clotho-AQA: one training sample per annotator answer whose confidence is `confidence` ("yes", as the paper;
    "any" keeps all); the test set is 1K questions of `test` (default clotho_aqa_test.csv if present, else held out of
    the training file), each with its confident answers as references.

    Files: `train` / `test` (Clotho-AQA CSV), clips at `audio_dir`/file_name. `sampling_rate` > 0 resamples every
    clip to that rate once (Clotho's WAVs are 44.1 kHz).
    """
    confidence = confidence.strip().lower()
    train_file = source_file(data_root, train, "Clotho-AQA", f"the training questions ({CLOTHO_FORMAT})")
    audio = source_dir(data_root, audio_dir)
    test_name = optional_source_file(data_root, test, ["clotho_aqa_test.csv"])
    sources = {"train": str(train_file), "audio": str(audio)}
    test_groups = None
    if test_name:
        test_file = source_file(data_root, test_name, "Clotho-AQA", f"the test questions ({CLOTHO_FORMAT})")
        sources["test"] = str(test_file)
        test_groups = _clotho_groups(test_file, audio, confidence, qa_instruction, "test")
    return ConversionPlan(
        dataset="Clotho-AQA",
        modality="audio",
        task="qa",
        format=CLOTHO_FORMAT,
        sources=sources,
        train_groups=_clotho_groups(train_file, audio, confidence, qa_instruction, "train"),
        test_groups=test_groups,
        media_step=_audio_step(sampling_rate),
        notes=[f"kept answers whose confidence is {confidence!r}"],
        options={"confidence": confidence, "sampling_rate": sampling_rate or None},
    )
