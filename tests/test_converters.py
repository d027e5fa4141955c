"""Converters from each data set's published format: tiny fixtures written here in those formats, never real data."""

import csv
import json
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recipes.cli import main as mera
from trainers.data import MediaError, load_samples, read_media
from trainers.data.converters import (
    CONVERTERS,
    convert,
    dry_run_report,
    format_dry_run_report,
    parse_options,
    read_ply,
    stream_samples,
)


# --- fixture writers, one per native format -----------------------------------------------------------------------
def write_image(path: Path, shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (shade, 100, 200)).save(path)


def write_wav(path: Path, rate: int = 8000, seconds: float = 0.25, frequency: float = 440.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    pcm = (0.5 * np.sin(2 * np.pi * frequency * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(pcm.tobytes())


def write_ply(path: Path, points: np.ndarray, colors: np.ndarray | None = None, binary: bool = True) -> None:
    """A PLY point cloud as Cap3D's PointCloud_zips ship them: float xyz, optional uchar rgb."""
    path.parent.mkdir(parents=True, exist_ok=True)
    properties = ["property float x", "property float y", "property float z"]
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        properties += ["property uchar red", "property uchar green", "property uchar blue"]
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    encoding = "binary_little_endian" if binary else "ascii"
    header = "\n".join(
        ["ply", f"format {encoding} 1.0", "comment fixture", f"element vertex {len(points)}", *properties]
        + ["element face 0", "property list uchar int vertex_indices", "end_header"]
    )
    table = np.empty(len(points), dtype=fields)
    for axis, name in enumerate("xyz"):
        table[name] = points[:, axis]
    if colors is not None:
        for channel, name in enumerate(("red", "green", "blue")):
            table[name] = colors[:, channel]
    with open(path, "wb") as handle:
        handle.write((header + "\n").encode("ascii"))
        if binary:
            handle.write(table.tobytes())
        else:
            for row in table:
                handle.write((" ".join(str(value) for value in row) + "\n").encode("ascii"))


def write_csv(path: Path, header: list[str] | None, rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def coco_captions(image_ids, prefix: str, captions_per_image: int = 3, without_caption=()) -> dict:
    images = [{"id": i, "file_name": f"COCO_{prefix}_{i:012d}.jpg", "height": 6, "width": 8} for i in image_ids]
    annotations = [
        {"id": 1000 * i + k, "image_id": i, "caption": f"caption {k} of image {i}."}
        for i in image_ids
        if i not in without_caption
        for k in range(captions_per_image)
    ]
    return {"info": {}, "images": images, "annotations": annotations[::-1]}  # order by image must not matter


@pytest.fixture
def coco_root(tmp_path) -> Path:
    root = tmp_path / "coco"
    write_json(
        root / "annotations/captions_train2014.json", coco_captions([1, 2, 3, 4, 5], "train2014", without_caption=[5])
    )
    write_json(
        root / "annotations/captions_val2014.json", coco_captions([11, 12, 13], "val2014", captions_per_image=5)
    )
    for i in (1, 2, 3, 4, 5):
        write_image(root / f"train2014/COCO_train2014_{i:012d}.jpg", shade=i)
    for i in (11, 12, 13):
        write_image(root / f"val2014/COCO_val2014_{i:012d}.jpg", shade=i)
    return root


# --- image --------------------------------------------------------------------------------------------------------
def test_mscoco_first_caption_for_training_all_captions_for_test(coco_root, tmp_path):
    out = tmp_path / "out"
    manifest = convert("mscoco", coco_root, out, progress=False)
    train = read_jsonl(out / "mscoco/train.jsonl")
    test = read_jsonl(out / "mscoco/test.jsonl")

    assert manifest["counts"] == {"train": 4, "test": 3}
    assert manifest["filters"]["train"]["images listed"] == 5
    assert manifest["filters"]["train"]["images without a caption (dropped)"] == 1
    # Annotations were written in reverse: the first caption of an image is its first in file order.
    assert {row["id"]: row["answer"] for row in train}["mscoco-2"] == "caption 2 of image 2."
    assert all(row["task"] == "caption" and row["dataset"] == "MSCOCO" and row["modality"] == "image" for row in train)
    assert all(len(row["references"]) == 5 for row in test)
    assert sorted(row["id"] for row in test) == ["mscoco-11", "mscoco-12", "mscoco-13"]
    assert manifest["test_from"] == "the test source" and manifest["seed"] == 0

    # Media paths are relative to the output folder; load_samples resolves and checks them.
    assert not Path(train[0]["media"]).is_absolute()
    samples = load_samples(out / "mscoco/test.jsonl", check_media=True)
    assert read_media(samples[0]["media"], "image").size == (8, 6)
    assert samples[0]["references"] == test[0]["references"]


def test_mscoco_held_out_test_is_disjoint_and_seeded(coco_root, tmp_path):
    (coco_root / "annotations/captions_val2014.json").unlink()
    first = convert("mscoco", coco_root, tmp_path / "a", test_size=2, progress=False)
    again = convert("mscoco", coco_root, tmp_path / "b", test_size=2, progress=False)
    train_ids = {row["id"] for row in read_jsonl(tmp_path / "a/mscoco/train.jsonl")}
    test_ids = {row["id"] for row in read_jsonl(tmp_path / "a/mscoco/test.jsonl")}

    assert first["counts"] == {"train": 2, "test": 2}
    assert not train_ids & test_ids and len(train_ids | test_ids) == 4
    assert first["filters"]["train"]["held out for the test set"] == 2
    assert (tmp_path / "a/mscoco/test.jsonl").read_text() == (tmp_path / "b/mscoco/test.jsonl").read_text()
    assert again["counts"] == first["counts"]
    splits = set()
    for seed in range(6):
        convert("mscoco", coco_root, tmp_path / f"s{seed}", test_size=2, seed=seed, progress=False)
        splits.add(frozenset(row["id"] for row in read_jsonl(tmp_path / f"s{seed}/mscoco/test.jsonl")))
    assert len(splits) > 1  # the seed changes the split


def test_okvqa_most_frequent_answer_and_ten_references(coco_root, tmp_path):
    root = tmp_path / "okvqa"
    answers = ["dog"] * 3 + ["puppy"] * 4 + ["cat"] * 3
    write_json(
        root / "OpenEnded_mscoco_train2014_questions.json",
        {"questions": [
            {"image_id": 1, "question": "What animal is this?", "question_id": 10},
            {"image_id": 2, "question": "Which sport?", "question_id": 20},
            {"image_id": 3, "question": "Unanswered?", "question_id": 30},
        ]},
    )  # fmt: skip
    write_json(
        root / "mscoco_train2014_annotations.json",
        {"annotations": [
            {"question_id": 10, "image_id": 1, "answers": [{"answer": a, "raw_answer": a} for a in answers]},
            {"question_id": 20, "image_id": 2, "answers": [{"answer": a} for a in ["tennis", "golf"] * 5]},
        ]},
    )  # fmt: skip
    manifest = convert(
        "okvqa", root, tmp_path / "out", test_size=1, progress=False, image_dir=str(coco_root / "train2014")
    )
    rows = read_jsonl(tmp_path / "out/okvqa/train.jsonl") + read_jsonl(tmp_path / "out/okvqa/test.jsonl")
    by_id = {row["id"]: row for row in rows}

    assert manifest["counts"] == {"train": 1, "test": 1}
    assert manifest["filters"]["train"]["questions without an annotated answer (dropped)"] == 1
    assert by_id["okvqa-10"]["answer"] == "puppy"
    assert by_id["okvqa-20"]["answer"] == "tennis"  # a tie goes to the answer listed first
    test_row = read_jsonl(tmp_path / "out/okvqa/test.jsonl")[0]
    assert len(test_row["references"]) == 10
    assert test_row["prompt"].startswith(("What animal is this?\n", "Which sport?\n"))
    assert by_id["okvqa-10"]["task"] == "qa" and by_id["okvqa-10"]["dataset"] == "OK-VQA"
    assert load_samples(tmp_path / "out/okvqa/train.jsonl", check_media=True)[0]["media"].endswith(".jpg")


# --- video --------------------------------------------------------------------------------------------------------
@pytest.fixture
def msvd_root(tmp_path) -> Path:
    root = tmp_path / "msvd"
    clips = {"aaa_1_5": 1, "bbb_2_9": 2, "ccc_0_4": 1250, "ddd_3_7": 1301, "eee_5_8": 1302}
    (root / "youtube_mapping.txt").parent.mkdir(parents=True)
    (root / "youtube_mapping.txt").write_text("".join(f"{clip} vid{n}\n" for clip, n in clips.items()))
    header = ["VideoID", "Start", "End", "WorkerID", "Source", "AnnotationTime", "Language", "Description"]
    rows = []
    for clip in clips:
        video, start, end = clip.split("_")
        for k in range(3):
            rows.append([video, start, end, 7, "clean", 20, "English", f"{clip} does thing {k}"])
        rows.append([video, start, end, 8, "unverified", 20, "German", f"{clip} macht etwas"])
        rows.append([video, start, end, 9, "clean", 20, "English", ""])
    write_csv(root / "video_corpus.csv", header, rows)
    for clip in clips:
        (root / "YouTubeClips").mkdir(exist_ok=True)
        (root / f"YouTubeClips/{clip}.avi").write_bytes(b"not a real video")
    return root


def test_msvd_standard_split_every_caption_for_training(msvd_root, tmp_path):
    manifest = convert("msvd", msvd_root, tmp_path / "out", progress=False)
    train = read_jsonl(tmp_path / "out/msvd/train.jsonl")
    test = read_jsonl(tmp_path / "out/msvd/test.jsonl")

    assert manifest["counts"] == {"train": 6, "test": 2}  # 2 training clips x 3 English captions; 2 test clips
    assert manifest["test_size"] == 670
    assert {row["answer"].split()[0] for row in train} == {"aaa_1_5", "bbb_2_9"}
    assert sorted(row["id"] for row in test) == ["msvd-ddd_3_7", "msvd-eee_5_8"]
    assert all(len(row["references"]) == 3 and "macht" not in " ".join(row["references"]) for row in test)
    assert manifest["filters"]["train"]["captions in English"] == 15
    assert all(row["media"].endswith(".avi") for row in train)


def test_msvd_text_annotations_without_mapping_hold_out_clips(msvd_root, tmp_path):
    (msvd_root / "video_corpus.csv").unlink()
    (msvd_root / "youtube_mapping.txt").unlink()
    lines = ["# MSVD descriptions", ""] + [
        f"{c} a caption {k} of {c}" for c in ("aaa_1_5", "bbb_2_9") for k in range(4)
    ]
    (msvd_root / "annotations.txt").write_text("\n".join(lines) + "\n")
    manifest = convert("msvd", msvd_root, tmp_path / "out", test_size=1, progress=False)

    assert manifest["counts"] == {"train": 4, "test": 1}
    assert "not the standard 670-clip split" in " ".join(manifest["notes"])
    test_clip = read_jsonl(tmp_path / "out/msvd/test.jsonl")[0]["id"].removeprefix("msvd-")
    assert all(test_clip not in row["id"] for row in read_jsonl(tmp_path / "out/msvd/train.jsonl"))


def test_msvd_qa_maps_video_ids_to_clips(msvd_root, tmp_path):
    qa = [
        {"answer": "dog", "id": i, "question": f"what is in clip {i}?", "video_id": v} for i, v in enumerate([1, 2, 2])
    ]
    write_json(msvd_root / "train_qa.json", qa + [{"answer": "x", "id": 9, "question": "?", "video_id": 404}])
    write_json(msvd_root / "test_qa.json", [{"answer": "cat", "id": 50, "question": "who?", "video_id": 1301}])
    manifest = convert("msvd_qa", msvd_root, tmp_path / "out", progress=False)
    train = read_jsonl(tmp_path / "out/msvd_qa/train.jsonl")
    test = read_jsonl(tmp_path / "out/msvd_qa/test.jsonl")

    assert manifest["counts"] == {"train": 3, "test": 1}
    assert manifest["filters"]["train"]["video_id not in youtube_mapping.txt (dropped)"] == 1
    assert [Path(row["media"]).name for row in train] == ["aaa_1_5.avi", "bbb_2_9.avi", "bbb_2_9.avi"]
    assert Path(test[0]["media"]).name == "ddd_3_7.avi" and test[0]["answer"] == "cat"
    assert test[0]["prompt"] == "who?\nAnswer the question using a single word or phrase."


def write_video(path: Path, frames: int = 12) -> None:
    av = pytest.importorskip("av")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        for index in range(frames):
            image = np.full((16, 32, 3), index * 20, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_msvd_frames_are_decoded_to_npy(msvd_root, tmp_path):
    for clip in ("aaa_1_5", "bbb_2_9", "ddd_3_7", "eee_5_8"):
        write_video(msvd_root / f"YouTubeClips/{clip}.avi")
    manifest = convert("msvd", msvd_root, tmp_path / "out", progress=False, frames=4)
    row = read_jsonl(tmp_path / "out/msvd/test.jsonl")[0]
    clip = np.load(tmp_path / "out/msvd" / row["media"])

    assert manifest["options"]["frames"] == 4 and row["media"].endswith(".npy")
    assert clip.shape == (4, 16, 32, 3) and clip.dtype == np.uint8
    assert clip[0].mean() < clip[-1].mean()  # first and last frames of a brightening clip


# --- audio --------------------------------------------------------------------------------------------------------
@pytest.fixture
def audiocaps_root(tmp_path) -> Path:
    root = tmp_path / "audiocaps"
    header = ["audiocap_id", "youtube_id", "start_time", "caption"]
    write_csv(root / "train.csv", header, [[i, f"yt{i}", 30, f"a dog barks {i}"] for i in range(5)])
    test_rows = [[100 + 5 * c + k, f"yt-test{c}", 0, f"rain {c} take {k}"] for c in range(3) for k in range(5)]
    write_csv(root / "test.csv", header, test_rows)
    for i in range(5):
        write_wav(root / f"audio/yt{i}.wav")
    for c in range(3):
        write_wav(root / f"audio/yt-test{c}.wav")
    return root


def test_audiocaps_test_clips_keep_all_captions(audiocaps_root, tmp_path):
    manifest = convert("audiocaps", audiocaps_root, tmp_path / "out", progress=False)
    test = read_jsonl(tmp_path / "out/audiocaps/test.jsonl")

    assert manifest["counts"] == {"train": 5, "test": 3}
    assert all(len(row["references"]) == 5 for row in test)
    assert read_jsonl(tmp_path / "out/audiocaps/train.jsonl")[0]["answer"] == "a dog barks 0"
    waveform, rate = read_media(load_samples(tmp_path / "out/audiocaps/train.jsonl")[0]["media"], "audio")
    assert rate == 8000 and len(waveform) == 2000


def test_audiocaps_missing_audio_names_the_file_or_is_skipped(audiocaps_root, tmp_path):
    (audiocaps_root / "audio/yt3.wav").unlink()
    with pytest.raises(MediaError, match=r"yt3\.wav") as error:
        convert("audiocaps", audiocaps_root, tmp_path / "out", progress=False)
    assert "--skip-missing-media" in str(error.value) and "AudioCaps" in str(error.value)
    assert not list((tmp_path / "out/audiocaps").iterdir())  # no partial files are left behind

    manifest = convert("audiocaps", audiocaps_root, tmp_path / "out", progress=False, skip_missing_media=True)
    assert manifest["counts"]["train"] == 4
    assert manifest["filters"]["train"]["dropped: media file missing"] == 1


def test_audiocaps_template_and_resampling(audiocaps_root, tmp_path):
    for i in range(5):
        (audiocaps_root / f"audio/yt{i}.wav").rename(audiocaps_root / f"audio/{i}.wav")
    manifest = convert(
        "audiocaps", audiocaps_root, tmp_path / "out", progress=False, test="none", test_size=1,
        **parse_options("audiocaps", ["audio_template={audiocap_id}.wav", "sampling_rate=16000"]),
    )  # fmt: skip
    row = read_jsonl(tmp_path / "out/audiocaps/train.jsonl")[0]
    waveform, rate = read_media(str(tmp_path / "out/audiocaps" / row["media"]), "audio")

    assert manifest["counts"] == {"train": 4, "test": 1}
    assert "audio_16000hz" in row["media"] and rate == 16000 and len(waveform) == 4000
    spectrum = np.abs(np.fft.rfft(waveform))
    assert abs(np.argmax(spectrum) * rate / len(waveform) - 440) < 10  # the tone survives resampling


@pytest.fixture
def clotho_root(tmp_path) -> Path:
    root = tmp_path / "clotho_aqa"
    header = ["file_name", "QuestionText", "answer", "confidence"]
    train = [
        ["a.wav", "Is it raining?", "yes", "yes"],
        ["a.wav", "Is it raining?", "yes", "maybe"],
        ["a.wav", "Is it raining?", "no", "no"],
        ["b.wav", "What animal?", "bird", "yes"],
        ["b.wav", "What animal?", "bird", "Yes"],
        ["b.wav", "What animal?", "crow", "yes"],
    ]
    test = [
        ["c.wav", "How many cars?", answer, confidence]
        for answer, confidence in [("two", "yes"), ("one", "yes"), ("two", "yes")]
    ]
    test += [["c.wav", "Is it loud?", "yes", "no"]]
    write_csv(root / "clotho_aqa_train.csv", header, train)
    write_csv(root / "clotho_aqa_test.csv", header, test)
    for name in ("a", "b", "c"):
        write_wav(root / f"audio_files/{name}.wav")
    return root


def test_clotho_aqa_keeps_confident_answers_only(clotho_root, tmp_path):
    manifest = convert("clotho_aqa", clotho_root, tmp_path / "out", progress=False)
    train = read_jsonl(tmp_path / "out/clotho_aqa/train.jsonl")
    test = read_jsonl(tmp_path / "out/clotho_aqa/test.jsonl")

    assert manifest["filters"]["train"] == {"answer rows": 6, "confidence == 'yes'": 4}
    assert [row["answer"] for row in train] == ["yes", "bird", "bird", "crow"]
    assert len(test) == 1  # "Is it loud?" has no confident answer
    assert test[0]["answer"] == "two" and test[0]["references"] == ["two", "one", "two"]
    assert all(row["dataset"] == "Clotho-AQA" and row["task"] == "qa" for row in train + test)


def test_clotho_aqa_missing_column_names_column_file_and_data_set(clotho_root, tmp_path):
    rows = list(csv.reader(open(clotho_root / "clotho_aqa_train.csv")))
    write_csv(clotho_root / "clotho_aqa_train.csv", None, [row[:3] for row in rows])
    with pytest.raises(ValueError) as error:
        convert("clotho_aqa", clotho_root, tmp_path / "out", progress=False)
    message = str(error.value)
    assert "'confidence'" in message and "clotho_aqa_train.csv" in message and "Clotho-AQA" in message
    assert "QuestionText" in message  # the expected columns are listed


def test_missing_annotation_file_names_it(clotho_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Clotho-AQA.*elsewhere\.csv"):
        convert("clotho_aqa", clotho_root, tmp_path / "out", progress=False, train="elsewhere.csv")


# --- point clouds -------------------------------------------------------------------------------------------------
def test_read_ply_binary_and_ascii(tmp_path):
    points = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    colors = np.random.default_rng(1).integers(0, 256, size=(50, 3)).astype(np.uint8)
    write_ply(tmp_path / "binary.ply", points, colors)
    write_ply(tmp_path / "ascii.ply", points, colors, binary=False)
    write_ply(tmp_path / "plain.ply", points)

    for name in ("binary.ply", "ascii.ply"):
        cloud = read_ply(tmp_path / name)
        assert cloud.shape == (50, 6) and cloud.dtype == np.float32
        np.testing.assert_allclose(cloud[:, :3], points, rtol=1e-6)
        np.testing.assert_allclose(cloud[:, 3:], colors / 255.0, rtol=1e-6)
    assert read_ply(tmp_path / "plain.ply").shape == (50, 3)
    # The training collator reads .ply clouds too, without a conversion step.
    np.testing.assert_allclose(read_media(str(tmp_path / "binary.ply"), "point_cloud")[:, :3], points, rtol=1e-6)
    (tmp_path / "bad.ply").write_bytes(b"solid mesh\n")
    with pytest.raises(MediaError, match="not a PLY file"):
        read_ply(tmp_path / "bad.ply")


@pytest.fixture
def cap3d_root(tmp_path) -> Path:
    root = tmp_path / "cap3d"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        uid = f"{i:032x}"
        caption = f"a small wooden chair number {i}" if i % 4 else "a very long caption " * 8
        rows.append([uid, caption])
        write_ply(root / f"point_clouds/{uid}.ply", rng.normal(size=(40, 3)), rng.integers(0, 256, size=(40, 3)))
    write_csv(root / "Cap3D_automated_Objaverse.csv", None, rows)
    return root


def test_cap3d_filters_long_captions_and_converts_ply(cap3d_root, tmp_path):
    manifest = convert("cap3d", cap3d_root, tmp_path / "out", progress=False, test_size=2, train_size=5)
    train = read_jsonl(tmp_path / "out/cap3d/train.jsonl")
    test = read_jsonl(tmp_path / "out/cap3d/test.jsonl")

    assert manifest["filters"]["train"]["objects"] == 12
    assert manifest["filters"]["train"]["caption <= 100 characters"] == 9
    assert manifest["counts"] == {"train": 5, "test": 2} and manifest["train_size"] == 5
    assert all(len(row["answer"]) <= 100 for row in train + test)
    assert not {row["id"] for row in train} & {row["id"] for row in test}
    cloud = read_media(load_samples(tmp_path / "out/cap3d/train.jsonl")[0]["media"], "point_cloud")
    assert cloud.shape == (40, 6) and 0.0 <= cloud[:, 3:].min() and cloud[:, 3:].max() <= 1.0
    assert "point_clouds" in train[0]["media"] and train[0]["media"].endswith(".npy")


def test_cap3d_caption_limit_and_paper_sizes(cap3d_root, tmp_path):
    rows = [["exactly", "x" * 100], ["longer", "y" * 101], ["short", "a chair"]]
    for uid, _ in rows:
        write_ply(cap3d_root / f"point_clouds/{uid}.ply", np.zeros((4, 3)))
    write_csv(cap3d_root / "Cap3D_automated_Objaverse.csv", None, rows)
    manifest = convert("cap3d", cap3d_root, tmp_path / "out", progress=False, test_size=1)
    kept = read_jsonl(tmp_path / "out/cap3d/train.jsonl") + read_jsonl(tmp_path / "out/cap3d/test.jsonl")

    assert sorted(row["id"] for row in kept) == ["cap3d-exactly", "cap3d-short"]
    assert manifest["train_size"] == 50_000  # the paper's subset; test_size defaults to its 1K
    plans = {name: CONVERTERS[name] for name in ("cap3d", "msvd")}
    assert plans["cap3d"](cap3d_root).default_test_size == 1000
    assert plans["cap3d"](cap3d_root).default_train_size == 50_000


def test_cap3d_split_ignores_file_order(cap3d_root, tmp_path):
    first = convert("cap3d", cap3d_root, tmp_path / "a", progress=False, test_size=3, train_size=4, seed=7)
    rows = list(csv.reader(open(cap3d_root / "Cap3D_automated_Objaverse.csv")))
    write_csv(cap3d_root / "Cap3D_automated_Objaverse.csv", None, rows[::-1])
    second = convert("cap3d", cap3d_root, tmp_path / "b", progress=False, test_size=3, train_size=4, seed=7)

    for split in ("train", "test"):
        ids = [{row["id"] for row in read_jsonl(tmp_path / f"{run}/cap3d/{split}.jsonl")} for run in ("a", "b")]
        assert ids[0] == ids[1]
    assert first["counts"] == second["counts"] == {"train": 4, "test": 3}


def test_cap3d_qa_holds_out_whole_objects(tmp_path):
    root = tmp_path / "cap3d_qa"
    header = ["", "sample_id", "caption", "caption_no_color", "question", "answer", "extractive", "correct"]
    rows = []
    (root / "point_clouds").mkdir(parents=True)
    for obj in range(6):
        np.save(root / f"point_clouds/obj{obj}.npy", np.ones((20, 6), np.float32))
        for q in range(3):
            rows.append([len(rows), f"obj{obj}", "cap", "cap", f"what is part {q}?", f"part{q}", True, True])
    write_csv(root / "CAP3DQA_final.csv", header, rows)
    manifest = convert("cap3d_qa", root, tmp_path / "out", progress=False, test_size=2)
    train = read_jsonl(tmp_path / "out/cap3d_qa/train.jsonl")
    test = read_jsonl(tmp_path / "out/cap3d_qa/test.jsonl")

    assert manifest["counts"] == {"train": 12, "test": 2} and manifest["train_size"] == 30_000
    test_objects = {Path(row["media"]).stem for row in test}
    assert len(test_objects) == 2 and not test_objects & {Path(row["media"]).stem for row in train}
    assert train[0]["media"].endswith(".npy") and "out" not in train[0]["media"]  # .npy clouds are used in place


# --- LLaVA / MLLM-CL ----------------------------------------------------------------------------------------------
def test_llava_conversations_and_mllm_cl_test_rows(tmp_path):
    root = tmp_path / "RS"
    for name in ("a.png", "b.png", "c.png"):
        write_image(root / "images" / name)
    write_json(
        root / "train.json",
        [
            {"id": "r1", "image": "images/a.png", "conversations": [
                {"from": "human", "value": "<image>\nHow many planes?"}, {"from": "gpt", "value": "3"},
                {"from": "human", "value": "Any ships?"}, {"from": "gpt", "value": "No"},
            ]},
            {"id": "r2", "image": "images/b.png", "conversations": [
                {"from": "human", "value": "What is this?\n<image>"}, {"from": "gpt", "value": "A port"},
            ]},
            {"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        ],
    )  # fmt: skip
    write_json(
        root / "test.json",
        [{"question_id": 7, "image": "images/c.png", "text": "Is there a river?", "answer": "Yes", "type": "2D"}],
    )
    manifest = convert("llava", root, tmp_path / "out", output_name="rs", progress=False)
    train = read_jsonl(tmp_path / "out/rs/train.jsonl")
    test = read_jsonl(tmp_path / "out/rs/test.jsonl")

    # One sample per row, every turn kept, the text-only row too.
    assert manifest["dataset"] == "RS" and manifest["counts"] == {"train": 3, "test": 1}
    assert manifest["filters"]["train"]["text-only samples (kept)"] == 1
    assert manifest["filters"]["train"]["assistant turns"] == 4
    assert [[turn["content"] for turn in row["messages"]] for row in train] == [
        ["<image>\nHow many planes?", "3", "Any ships?", "No"], ["What is this?\n<image>", "A port"], ["Hi", "Hello"]
    ]  # fmt: skip
    assert [row["media"] for row in train] == ["../../RS/images/a.png", "../../RS/images/b.png", None]
    assert [row["modality"] for row in train] == ["image", "image", None]
    question, answer = {"role": "user", "content": "Is there a river?"}, {"role": "assistant", "content": "Yes"}
    assert test[0]["messages"] == [question, answer]
    assert {key: test[0][key] for key in ("id", "modality", "prompt", "answer", "references", "task", "dataset")} == {
        "id": "rs-test-7", "modality": "image", "prompt": "Is there a river?", "answer": "Yes", "references": ["Yes"],
        "task": "qa", "dataset": "RS",
    }  # fmt: skip
    assert len(load_samples(tmp_path / "out/rs/train.jsonl")) == 3


def test_llava_rows_in_an_unknown_format_are_named(tmp_path):
    write_image(tmp_path / "x/a.png")
    write_json(tmp_path / "x/train.json", [{"id": 1, "image": "a.png", "question": "q", "label": "a"}])
    with pytest.raises(ValueError, match=r"train\.json, item 0: neither 'conversations' nor 'text' \+ 'answer'"):
        convert("llava", tmp_path / "x", tmp_path / "out", progress=False)


# --- options, registry, command line, dry run ---------------------------------------------------------------------
def test_registry_and_option_parsing():
    assert set(CONVERTERS) == {
        "mscoco", "okvqa", "msvd", "msvd_qa", "audiocaps", "clotho_aqa", "cap3d", "cap3d_qa", "llava", "mllm_cl",
    }  # fmt: skip
    assert parse_options("cap3d", ["max_caption_chars=80", "point_dir=/x"]) == {
        "max_caption_chars": 80,
        "point_dir": "/x",
    }
    with pytest.raises(ValueError, match="unknown option 'colour'"):
        parse_options("cap3d", ["colour=red"])
    with pytest.raises(ValueError, match="must be a int"):
        parse_options("msvd", ["frames=four"])


def test_mera_data_command(clotho_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert mera(["data", "convert", "clotho_aqa", "--data-root", str(clotho_root), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Clotho-AQA: 4 training and 1 test samples" in printed and "confidence == 'yes': 4" in printed
    manifest = json.loads((out / "clotho_aqa/manifest.json").read_text())
    assert manifest["sources"]["train"].endswith("clotho_aqa_train.csv") and manifest["seed"] == 0

    assert mera(["data", "check", "--data-root", str(out), "clotho_aqa/train.jsonl", "clotho_aqa/test.jsonl"]) == 0
    assert "every data and media file is usable" in capsys.readouterr().out
    assert mera(["data", "list", "cap3d"]) == 0
    assert "max_caption_chars = 100" in capsys.readouterr().out

    args = ["data", "convert", "clotho_aqa", "--data-root", str(clotho_root), "--out", str(out), "--quiet"]
    assert mera([*args, "--option", "train=missing.csv"]) == 2
    assert "missing.csv" in capsys.readouterr().err

    # Issue 17: the output name cannot lead outside --out (the old code wrote to <out>/../../x).
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert mera([*args, "--name", "../../x"]) == 2
    assert "output name '../../x' leads outside" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (tmp_path.parent / "x").exists()

    # A malformed line is reported with its file and line, not raised (the old `mera data check` crashed).
    with open(out / "clotho_aqa/test.jsonl", "a") as file:
        file.write("{not json\n")
    assert mera(["data", "check", "--data-root", str(out), "clotho_aqa/test.jsonl"]) == 1
    assert f"{out / 'clotho_aqa/test.jsonl'}, line 2: not valid JSON" in capsys.readouterr().out


def test_dry_run_report_counts_and_missing_media(coco_root, tmp_path):
    out = tmp_path / "data"
    convert("mscoco", coco_root, out, progress=False)
    okvqa = tmp_path / "okvqa"
    write_json(okvqa / "OpenEnded_mscoco_train2014_questions.json", {"questions": [
        {"image_id": i, "question": "What?", "question_id": i} for i in (1, 2, 3)
    ]})  # fmt: skip
    write_json(okvqa / "mscoco_train2014_annotations.json", {"annotations": [
        {"question_id": i, "answers": [{"answer": "thing"}] * 10} for i in (1, 2, 3)
    ]})  # fmt: skip
    convert("okvqa", okvqa, out, test_size=1, progress=False, image_dir=str(coco_root / "train2014"))
    stages = [
        {"modality": "image", "train": ["mscoco/train.jsonl", "okvqa/train.jsonl"], "test": ["mscoco/test.jsonl"]},
        {"modality": "video", "train": ["msvd/train.jsonl"], "test": []},
    ]

    report = dry_run_report(stages, out)
    assert report["ok"] is False  # stage 2's file was never converted
    first = report["stages"][0]
    assert first["train"]["datasets"] == {"MSCOCO": {"caption": 4}, "OK-VQA": {"qa": 2}}
    assert first["train"]["samples"] == 6 and first["test"]["samples"] == 3 and first["missing_media"] == 0
    assert report["stages"][1]["train"]["missing_files"] == [str(out / "msvd/train.jsonl")]

    # An image shared by MSCOCO and OK-VQA disappears: it is reported once, with the sample and file naming it.
    (coco_root / "train2014/COCO_train2014_000000000002.jpg").unlink()
    report = dry_run_report(stages[:1], out)
    assert report["ok"] is False and report["stages"][0]["missing_media"] == 1
    assert "COCO_train2014_000000000002.jpg" in report["stages"][0]["missing_examples"][0]
    text = format_dry_run_report(report)
    assert "MSCOCO caption 4" in text and "MISSING 1 media file(s)" in text


def test_stream_samples_matches_load_samples(coco_root, tmp_path):
    convert("mscoco", coco_root, tmp_path, progress=False)
    streamed = list(stream_samples(tmp_path / "mscoco/test.jsonl"))
    loaded = load_samples(tmp_path / "mscoco/test.jsonl").to_list()
    assert streamed == loaded
