"""
The offline demo benchmark: four synthetic modalities, each with a caption data set and a QA data set, generated
deterministically from a seed with no download.

    image        coloured shapes drawn on a small canvas           "a picture of two red circles"
    video        a coloured shape moving across a few frames       "a red circle moves to the left"
    audio        a tone beeping a few times, high, middle or low   "a high tone beeps three times"
    point_cloud  a coloured 3D primitive (xyz + rgb per point)     "a 3d model of a red cube"

Design choices, learnt from a throw-away prototype (see DESIGN.md):
- Each modality asks in its own words ("describe the sound ." / "describe the shape .") and captions in its own
  style, so that one modality's caption template cannot stand in for another's.
- The words that carry the content are shared between modalities (colours, numbers, shape names, left / right), so
  that learning a new modality can make the language model forget an old one.
- Every answer is a function of the media's attributes, and every attribute value is equally frequent within each
  question, so that a model that ignores the input answers at chance: `majority_baseline` measures it.
- Every text is lower case with its punctuation split off by spaces (`normalize_text`), the form in which the demo
  tokenizer decodes, so that exact-match scoring compares like with like.

Layout of `out_dir` (media paths in the JSONL files are relative to the file's folder, `load_samples`' default):

    manifest.json                      settings, counts, data sets, vocabulary, input-ignoring baselines
    <modality>/train.jsonl, test.jsonl one caption sample and one QA sample per media item
    <modality>/media/<split>-NNNN.png|.npy|.wav
"""

import json
import math
import os
import re
import shutil
import wave
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from ..evaluation.cider import score_captions

MODALITIES = ("image", "video", "audio", "point_cloud")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1

# The same pre-tokenisation as the demo tokenizer (`tokenizers`' Whitespace: \w+|[^\w\s]+).
_WORD = re.compile(r"\w+|[^\w\s]+")

COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}


def normalize_text(text: str) -> str:
    """Lower case, punctuation split off, single spaces: the form the demo tokenizer decodes to."""
    return " ".join(_WORD.findall(text.lower()))


@dataclass(frozen=True)
class BenchmarkSizes:
    """Media sizes; the demo's encoders are built to match them (`trainers.demo.encoders`)."""

    image_size: int = 32
    """Width and height of images and of video frames, in pixels."""
    num_frames: int = 4
    """Frames per video clip."""
    audio_seconds: int = 1
    """Length of every sound, in whole seconds."""
    sampling_rate: int = 16000
    """Audio sampling rate, Hz."""
    num_points: int = 256
    """Points per cloud; each point is xyz + rgb."""

    def __post_init__(self):
        minimums = {"image_size": 16, "num_frames": 2, "audio_seconds": 1, "sampling_rate": 8000, "num_points": 32}
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"benchmark size {name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class Question:
    attribute: str
    """The attribute whose value is the answer."""
    prompt: str


class SyntheticModality:
    """
    One data set of a benchmark: its attributes, wordings, and how an item is rendered and written. In the
    four-modality benchmark each is a modality with captions and QA; in the domain benchmark
    (`trainers.demo.domains`) each is a task on the image modality (`modality`), QA only (`caption_prompt` None).
    """

    name: str
    suffix: str
    attributes: dict[str, tuple[str, ...]]
    caption_prompt: str | None
    questions: tuple[Question, ...]
    stream: int
    """Index of the set's random stream: changing one set's size leaves the others' files unchanged."""

    @property
    def modality(self) -> str:
        """The model modality the set's media belong to."""
        return self.name

    def caption(self, attributes: dict[str, str]) -> str:
        raise NotImplementedError

    def answer(self, question: Question, attributes: dict[str, str]) -> str:
        return attributes[question.attribute]

    def render(self, attributes: dict[str, str], rng: np.random.Generator, sizes: BenchmarkSizes):
        raise NotImplementedError

    def write(self, media, path: Path, sizes: BenchmarkSizes):
        np.save(path, media)


def _noisy_canvas(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.clip(rng.normal(30, 6, (size, size, 3)), 0, 255)


def _jittered_color(rng: np.random.Generator, color: str) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLORS[color])


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, radius: float, fill: tuple[int, ...]):
    if shape == "circle":
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)
    elif shape == "square":
        half = radius * 0.85  # about the circle's area, so that size does not give the shape away
        draw.rectangle([x - half, y - half, x + half, y + half], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - radius), (x - radius, y + radius * 0.8), (x + radius, y + radius * 0.8)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


class ImageModality(SyntheticModality):
    """1 to 3 shapes of one kind and one colour, each in its own quadrant of a noisy dark canvas."""

    name = "image"
    suffix = ".png"
    stream = 0
    attributes = {"count": NUMBER_WORDS[1:4], "shape": ("circle", "square", "triangle"), "color": tuple(COLORS)}
    caption_prompt = "describe the picture ."
    questions = (
        Question("count", "how many shapes are in the picture ?"),
        Question("color", "what color are the shapes ?"),
        Question("shape", "what kind of shape is in the picture ?"),
    )

    def caption(self, attributes):
        count = attributes["count"]
        shape = attributes["shape"] if count == "one" else PLURALS[attributes["shape"]]
        return f"a picture of {count} {attributes['color']} {shape}"

    def render(self, attributes, rng, sizes):
        size = sizes.image_size
        image = Image.fromarray(_noisy_canvas(rng, size).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        fill = _jittered_color(rng, attributes["color"])
        quadrants = rng.permutation(4)[: NUMBER_WORDS.index(attributes["count"])]
        for quadrant in sorted(quadrants.tolist()):
            x = (quadrant % 2 + 0.5) * size / 2 + rng.uniform(-0.04, 0.04) * size
            y = (quadrant // 2 + 0.5) * size / 2 + rng.uniform(-0.04, 0.04) * size
            _draw_shape(draw, attributes["shape"], x, y, rng.uniform(0.16, 0.21) * size, fill)
        return image

    def write(self, media, path, sizes):
        media.save(path, format="PNG")


DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


class VideoModality(SyntheticModality):
    """A shape crossing the frame in one direction: `(frames, H, W, 3)` uint8 saved as .npy."""

    name = "video"
    suffix = ".npy"
    stream = 1
    attributes = {"direction": tuple(DIRECTIONS), "shape": ("circle", "square", "triangle"), "color": tuple(COLORS)}
    caption_prompt = "what happens in the video ?"
    questions = (
        Question("direction", "which way does the shape move ?"),
        Question("color", "what color is the moving shape ?"),
        Question("shape", "what shape is moving ?"),
    )

    def caption(self, attributes):
        direction = attributes["direction"]
        motion = f"to the {direction}" if direction in ("left", "right") else direction
        return f"a {attributes['color']} {attributes['shape']} moves {motion}"

    def render(self, attributes, rng, sizes):
        size, frames = sizes.image_size, sizes.num_frames
        dx, dy = DIRECTIONS[attributes["direction"]]
        radius = rng.uniform(0.17, 0.21) * size
        start, end = rng.uniform(0.22, 0.3) * size, rng.uniform(0.7, 0.78) * size
        across = rng.uniform(0.3, 0.7) * size
        fill = _jittered_color(rng, attributes["color"])
        clip = []
        for index in range(frames):
            along = start + (end - start) * index / (frames - 1)
            along = along if dx + dy > 0 else size - along
            x, y = (along, across) if dx else (across, along)
            frame = Image.fromarray(_noisy_canvas(rng, size).astype(np.uint8))
            _draw_shape(ImageDraw.Draw(frame), attributes["shape"], x, y, radius, fill)
            clip.append(np.asarray(frame))
        return np.stack(clip)


PITCHES = {"low": 300.0, "middle": 900.0, "high": 2700.0}


class AudioModality(SyntheticModality):
    """A tone beeping 1 to 4 times at a low, middle or high pitch, in a mono 16-bit WAV file."""

    name = "audio"
    suffix = ".wav"
    stream = 2
    attributes = {"count": NUMBER_WORDS[1:5], "pitch": tuple(PITCHES)}
    caption_prompt = "describe the sound ."
    questions = (
        Question("count", "how many beeps do you hear ?"),
        Question("pitch", "is the tone high , middle or low ?"),
    )

    def caption(self, attributes):
        count = NUMBER_WORDS.index(attributes["count"])
        times = "once" if count == 1 else f"{attributes['count']} times"
        return f"a {attributes['pitch']} tone beeps {times}"

    def render(self, attributes, rng, sizes):
        rate, length = sizes.sampling_rate, sizes.audio_seconds * sizes.sampling_rate
        count = NUMBER_WORDS.index(attributes["count"])
        duration = sizes.audio_seconds
        beep = rng.uniform(0.08, 0.11) * duration
        gap = rng.uniform(0.2, 0.23) * duration
        first = rng.uniform(0.04, duration - 0.04 - beep - (count - 1) * gap)
        frequency = PITCHES[attributes["pitch"]] * rng.uniform(0.95, 1.05)
        amplitude = rng.uniform(0.3, 0.6)
        time = np.arange(length) / rate
        waveform = 0.01 * rng.standard_normal(length)
        for index in range(count):
            onset = int((first + index * gap) * rate)
            span = np.arange(onset, onset + int(beep * rate))
            waveform[span] += amplitude * np.hanning(len(span)) * np.sin(2 * np.pi * frequency * time[span])
        return np.clip(waveform, -1, 1)

    def write(self, media, path, sizes):
        with wave.open(str(path), "wb") as audio:
            audio.setnchannels(1)
            audio.setsampwidth(2)
            audio.setframerate(sizes.sampling_rate)
            audio.writeframes((media * 32767).astype("<i2").tobytes())


def _surface_points(shape: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` points spread uniformly over the surface of a unit-sized primitive standing on the z axis."""
    if shape == "sphere":
        points = rng.standard_normal((count, 3))
        return points / np.linalg.norm(points, axis=1, keepdims=True)
    if shape == "cube":
        points = rng.uniform(-1, 1, (count, 3))
        face_axis = rng.integers(0, 3, count)
        points[np.arange(count), face_axis] = rng.choice([-1.0, 1.0], count)
        return points
    angle = rng.uniform(0, 2 * np.pi, count)
    if shape == "cylinder":  # radius 0.7, height 2: side and caps chosen by their areas
        radius, side_area, cap_area = 0.7, 2 * np.pi * 0.7 * 2, np.pi * 0.7**2
        on_side = rng.uniform(0, side_area + 2 * cap_area, count) < side_area
        r = np.where(on_side, radius, radius * np.sqrt(rng.uniform(0, 1, count)))
        z = np.where(on_side, rng.uniform(-1, 1, count), rng.choice([-1.0, 1.0], count))
        return np.stack([r * np.cos(angle), r * np.sin(angle), z], axis=1)
    if shape == "cone":  # base radius 1 at z = -1, apex at z = 1
        side_area, base_area = np.pi * math.sqrt(5), np.pi
        on_side = rng.uniform(0, side_area + base_area, count) < side_area
        # On the lateral surface the point density grows linearly towards the base.
        from_apex = np.sqrt(rng.uniform(0, 1, count))
        r = np.where(on_side, from_apex, np.sqrt(rng.uniform(0, 1, count)))
        z = np.where(on_side, 1 - 2 * from_apex, -1.0)
        return np.stack([r * np.cos(angle), r * np.sin(angle), z], axis=1)
    raise ValueError(f"unknown primitive {shape!r}")


class PointCloudModality(SyntheticModality):
    """A coloured primitive: `(num_points, 6)` float32 (xyz, rgb in [0, 1]) saved as .npy."""

    name = "point_cloud"
    suffix = ".npy"
    stream = 3
    attributes = {"shape": ("cube", "sphere", "cone", "cylinder"), "color": tuple(COLORS)}
    caption_prompt = "describe the shape ."
    questions = (
        Question("shape", "what shape is the object ?"),
        Question("color", "what color is the object ?"),
    )

    def caption(self, attributes):
        return f"a 3d model of a {attributes['color']} {attributes['shape']}"

    def render(self, attributes, rng, sizes):
        xyz = _surface_points(attributes["shape"], sizes.num_points, rng) + rng.normal(0, 0.01, (sizes.num_points, 3))
        angle = rng.uniform(0, 2 * np.pi)
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        # Size and place vary, but mean nothing: the processor centres every cloud and scales it to the unit sphere.
        xyz = xyz @ rotation.T * rng.uniform(0.5, 1.5) + rng.uniform(-0.2, 0.2, 3)
        rgb = np.array(_jittered_color(rng, attributes["color"])) / 255 + rng.normal(0, 0.02, xyz.shape)
        return np.concatenate([xyz, np.clip(rgb, 0, 1)], axis=1).astype(np.float32)


SYNTHETIC_MODALITIES: dict[str, SyntheticModality] = {
    modality.name: modality for modality in (ImageModality(), VideoModality(), AudioModality(), PointCloudModality())
}
# Every data set `build_benchmark` can write, by name: the modalities here, the domains of `trainers.demo.domains`.
SYNTHETIC_SETS: dict[str, SyntheticModality] = dict(SYNTHETIC_MODALITIES)


def dataset_names(modality: str) -> dict[str, str]:
    """The data set names of a modality, by task: {'caption': 'image-caption', 'qa': 'image-qa'}."""
    return {"caption": f"{modality}-caption", "qa": f"{modality}-qa"}


def _balanced(values: Sequence[str], count: int, rng: np.random.Generator) -> list[str]:
    """`count` values, each equally often (up to one), in random order."""
    return [values[i] for i in rng.permutation(np.resize(np.arange(len(values)), count))]


def plan_items(modality: SyntheticModality, count: int, rng: np.random.Generator) -> list[tuple[Question, dict]]:
    """
    The (question, attributes) of `count` items. Questions take turns, and within the items of each question every
    attribute's values are equally frequent, so that no answer can be guessed from the question alone.
    """
    questions = [modality.questions[i % len(modality.questions)] for i in range(count)]
    attributes: list[dict] = [{} for _ in range(count)]
    for question in modality.questions:
        indices = [i for i in range(count) if questions[i] is question]
        for name, values in modality.attributes.items():
            for index, value in zip(indices, _balanced(values, len(indices), rng)):
                attributes[index][name] = value
    order = rng.permutation(count)
    return [(questions[i], attributes[i]) for i in order]


def _split_rng(seed: int, modality: SyntheticModality, split: str) -> np.random.Generator:
    # Each data set and split has its own stream: changing one's size leaves the others' files unchanged.
    return np.random.default_rng([seed, modality.stream, ("train", "test").index(split)])


def build_split(
    modality: SyntheticModality, split: str, count: int, seed: int, sizes: BenchmarkSizes, folder: Path, progress=True
) -> list[dict]:
    """Render and write `count` media items of one split; returns its rows (a caption and a QA sample per item)."""
    rng = _split_rng(seed, modality, split)
    names = dataset_names(modality.name)
    (folder / "media").mkdir(parents=True, exist_ok=True)
    rows = []
    items = plan_items(modality, count, rng)
    for index, (question, attributes) in enumerate(
        tqdm(items, desc=f"{modality.name} {split}", disable=not progress, leave=False)
    ):
        media_path = f"media/{split}-{index:04d}{modality.suffix}"
        modality.write(modality.render(attributes, rng, sizes), folder / media_path, sizes)
        common = {"modality": modality.modality, "media": media_path, "attributes": attributes}
        if modality.caption_prompt is not None:
            rows.append(
                {
                    "id": f"{modality.name}-{split}-{index:04d}-caption",
                    **common,
                    "prompt": modality.caption_prompt,
                    "answer": modality.caption(attributes),
                    "task": "caption",
                    "dataset": names["caption"],
                }
            )
        rows.append(
            {
                "id": f"{modality.name}-{split}-{index:04d}-qa",
                **common,
                "prompt": question.prompt,
                "answer": modality.answer(question, attributes),
                "task": "qa",
                "dataset": names["qa"],
            }
        )
    for row in rows:
        for key in ("prompt", "answer"):
            if normalize_text(row[key]) != row[key]:
                raise ValueError(f"{row['id']}: {key} {row[key]!r} is not in normalised form")
    return rows


def majority_baseline(samples: Iterable[dict], reference: Iterable[dict] | None = None) -> dict[str, float]:
    """
    Exact-match accuracy, per QA data set, of the input-ignoring baseline that answers every question with its most
    frequent answer. The majority is taken in `reference` (e.g. the training split) or, by default, in `samples`
    themselves: then it is the best any model that ignores the input can do with one answer per question.
    """
    samples = [sample for sample in samples if sample["task"] == "qa"]
    reference = samples if reference is None else [sample for sample in reference if sample["task"] == "qa"]
    answers_by_question: dict[tuple[str, str], Counter] = {}
    for sample in reference:
        answers_by_question.setdefault((sample["dataset"], sample["prompt"]), Counter())[sample["answer"]] += 1
    correct, total = Counter(), Counter()
    for sample in samples:
        counts = answers_by_question.get((sample["dataset"], sample["prompt"]))
        guess = counts.most_common(1)[0][0] if counts else None
        correct[sample["dataset"]] += int(guess == sample["answer"])
        total[sample["dataset"]] += 1
    return {name: correct[name] / total[name] for name in sorted(total)}


def chance_accuracy(modality: str) -> float:
    """Accuracy of guessing among the possible answers, averaged over the modality's questions (taken in turns)."""
    synthetic = SYNTHETIC_SETS[modality]
    return float(np.mean([1 / len(synthetic.attributes[q.attribute]) for q in synthetic.questions]))


def constant_caption_baseline(samples: Iterable[dict], reference: Iterable[dict]) -> dict[str, float]:
    """CIDEr-D x 100, per caption data set, of always predicting the most frequent caption of `reference`."""
    samples = [sample for sample in samples if sample["task"] == "caption"]
    scores = {}
    for name in sorted({sample["dataset"] for sample in samples}):
        counts = Counter(sample["answer"] for sample in reference if sample["dataset"] == name)
        guess = min(counts, key=lambda caption: (-counts[caption], caption))
        references = [sample["answer"] for sample in samples if sample["dataset"] == name]
        scores[name] = score_captions([guess] * len(references), references)["score"]
    return scores


def _words(rows: Iterable[dict]) -> set[str]:
    return {word for row in rows for key in ("prompt", "answer") for word in row[key].split()}


def _write_jsonl(path: Path, rows: list[dict]):
    with open(path, "w", encoding="utf-8", newline="\n") as file:
        for row in rows:
            file.write(json.dumps(row, sort_keys=True) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_manifest(benchmark_dir: str | os.PathLike) -> dict:
    path = Path(benchmark_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{benchmark_dir} holds no demo benchmark (no {MANIFEST}); run build_benchmark")
    return json.loads(path.read_text(encoding="utf-8"))


def read_split(benchmark_dir: str | os.PathLike, modality: str, split: str) -> list[dict]:
    """The raw rows of one split (with their `attributes`); `trainers.data.load_samples` reads the same files."""
    return _read_jsonl(Path(benchmark_dir) / modality / f"{split}.jsonl")


def build_benchmark(
    out_dir: str | os.PathLike,
    seed: int = 0,
    train_per_modality: int = 240,
    test_per_modality: int = 48,
    modalities: Sequence[str] = MODALITIES,
    sizes: BenchmarkSizes | dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """
    Write the demo benchmark to `out_dir` and return its manifest. Same arguments, byte-identical files.

    Args:
        out_dir: the benchmark folder. When it already holds a benchmark built with the same settings, that one is
            reused (nothing is rewritten); with other settings, it is replaced only if `overwrite`.
        seed: seed of every attribute, jitter and noise.
        train_per_modality / test_per_modality: media items per modality and split; each item gives one caption
            sample and one QA sample.
        modalities: the data sets to write, e.g. ("image", "video", "audio", "point_cloud"), or the domains of
            `trainers.demo.domains.DOMAINS` (tasks on the image modality); each gets its own folder.
        sizes: media sizes (`BenchmarkSizes` or a dict of its fields).
        progress: show progress bars.

    The folder is built next to `out_dir` and renamed into place when complete, so a killed build leaves no
    half-written benchmark.
    """
    sizes = BenchmarkSizes(**sizes) if isinstance(sizes, dict) else sizes or BenchmarkSizes()
    unknown = [name for name in modalities if name not in SYNTHETIC_SETS]
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {list(SYNTHETIC_SETS)}, got {list(modalities)}")
    for name, count in (("train_per_modality", train_per_modality), ("test_per_modality", test_per_modality)):
        if not isinstance(count, int) or count < 4:
            raise ValueError(f"{name} must be an integer >= 4 (every question needs items), got {count!r}")
    settings = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "train_per_modality": train_per_modality,
        "test_per_modality": test_per_modality,
        "modalities": list(modalities),
        "sizes": asdict(sizes),
    }
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST).is_file():
        manifest = load_manifest(out_dir)
        if manifest.get("settings") == settings:
            return manifest
        if not overwrite:
            differing = sorted(k for k in settings if manifest.get("settings", {}).get(k) != settings[k])
            raise FileExistsError(
                f"{out_dir} holds a demo benchmark built with other settings ({differing}); pass overwrite=True or "
                "choose another folder"
            )
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not a demo benchmark (no {MANIFEST}); choose another folder")

    building = out_dir.with_name(f".{out_dir.name}.building")
    shutil.rmtree(building, ignore_errors=True)
    splits = {"train": train_per_modality, "test": test_per_modality}
    rows: dict[str, dict[str, list[dict]]] = {}
    for name in modalities:
        synthetic = SYNTHETIC_SETS[name]
        rows[name] = {}
        for split, count in splits.items():
            rows[name][split] = build_split(synthetic, split, count, seed, sizes, building / name, progress)
            _write_jsonl(building / name / f"{split}.jsonl", rows[name][split])

    manifest = {"settings": settings, **_describe(rows)}
    (building / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(building, out_dir)
    return manifest


def _describe(rows: dict[str, dict[str, list[dict]]]) -> dict:
    """The manifest's content part: files, counts, wordings, vocabulary and the input-ignoring baselines."""
    modality_words = {
        name: sorted(_words(row for split_rows in splits.values() for row in split_rows))
        for name, splits in rows.items()
    }
    word_modalities = Counter(word for words in modality_words.values() for word in words)
    modalities = {}
    for name, splits in rows.items():
        synthetic = SYNTHETIC_SETS[name]
        names = dataset_names(name)
        captions = synthetic.caption_prompt is not None
        per_item = 2 if captions else 1
        modalities[name] = {
            "modality": synthetic.modality,
            "files": {split: f"{name}/{split}.jsonl" for split in splits},
            "datasets": {**({names["caption"]: "cider"} if captions else {}), names["qa"]: "exact_match"},
            "samples": {split: len(split_rows) for split, split_rows in splits.items()},
            "media_items": {split: len(split_rows) // per_item for split, split_rows in splits.items()},
            "caption_prompt": synthetic.caption_prompt,
            "questions": {question.prompt: question.attribute for question in synthetic.questions},
            "attributes": {key: list(values) for key, values in synthetic.attributes.items()},
            "chance_accuracy": chance_accuracy(name),
            "majority_baseline": {
                "test": majority_baseline(splits["test"])[names["qa"]],
                "train_majority_on_test": majority_baseline(splits["test"], splits["train"])[names["qa"]],
            },
            "constant_caption_cider": (
                constant_caption_baseline(splits["test"], splits["train"])[names["caption"]] if captions else None
            ),
        }
    return {
        "modalities": modalities,
        "vocabulary": sorted(word_modalities),
        "modality_vocabulary": modality_words,
        "shared_words": sorted(word for word, count in word_modalities.items() if count > 1),
    }


__all__ = [
    "MODALITIES",
    "BenchmarkSizes",
    "SYNTHETIC_MODALITIES",
    "SYNTHETIC_SETS",
    "build_benchmark",
    "chance_accuracy",
    "constant_caption_baseline",
    "dataset_names",
    "load_manifest",
    "majority_baseline",
    "normalize_text",
    "read_split",
]
