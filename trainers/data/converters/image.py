"""Image data sets: MSCOCO-2014 captions and OK-VQA (VQA-style questions and annotations on COCO images)."""

from collections import Counter
from pathlib import Path

from .core import (
    DEFAULT_QA_INSTRUCTION,
    ConversionPlan,
    Group,
    most_frequent,
    optional_source_file,
    qa_prompt,
    read_json,
    require_keys,
    sample,
    source_dir,
    source_file,
)

COCO_FORMAT = (
    'COCO captions JSON: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]} '
    "(annotations/captions_train2014.json, captions_val2014.json)"
)
OKVQA_FORMAT = (
    'VQA-style JSON: questions {"questions": [{"question_id", "image_id", "question"}]} and annotations '
    '{"annotations": [{"question_id", "answers": [{"answer", ...}]}]} '
    "(OpenEnded_mscoco_train2014_questions.json, mscoco_train2014_annotations.json)"
)


def _coco_groups(path: Path, image_dir: Path, prompt: str):
    def groups(counts: Counter):
        data = read_json(path, "MSCOCO", COCO_FORMAT)
        require_keys(data, ("images", "annotations"), path, "top level", "MSCOCO", COCO_FORMAT)
        files = {}
        for index, image in enumerate(data["images"]):
            require_keys(image, ("id", "file_name"), path, f"images[{index}]", "MSCOCO", COCO_FORMAT)
            files[image["id"]] = image["file_name"]
        captions: dict = {}
        for index, annotation in enumerate(data["annotations"]):
            require_keys(annotation, ("image_id", "caption"), path, f"annotations[{index}]", "MSCOCO", COCO_FORMAT)
            captions.setdefault(annotation["image_id"], []).append(annotation["caption"].strip())
        counts["images listed"] += len(files)
        counts["captions"] += len(data["annotations"])
        for image_id, file_name in files.items():
            texts = captions.get(image_id)
            if not texts:
                counts["images without a caption (dropped)"] += 1
                continue
            # Training uses each image's first caption (as the paper); scoring uses all of them.
            item = sample(f"mscoco-{image_id}", "image", image_dir / file_name, prompt, texts[0], "caption", "MSCOCO")
            yield Group(key=str(image_id), train=[item], test={**item, "references": texts})

    return groups


def convert_mscoco(
    data_root: Path,
    captions: str = "annotations/captions_train2014.json",
    image_dir: str = "train2014",
    test_captions: str | None = None,
    test_image_dir: str = "val2014",
    prompt: str = "Describe the image in one sentence.",
) -> ConversionPlan:
    """
    MSCOCO-2014 captions: one training sample per image with its first caption; test samples keep all captions.

    Files: `captions` (COCO captions JSON) with images under `image_dir` (`images[].file_name`, e.g.
    COCO_train2014_000000000009.jpg). Test: 1K images of `test_captions` (default annotations/captions_val2014.json if
    present, under `test_image_dir`), else 1K images held out of the training file.
    """
    train_file = source_file(data_root, captions, "MSCOCO", f"the training captions ({COCO_FORMAT})")
    test_file = optional_source_file(data_root, test_captions, ["annotations/captions_val2014.json"])
    sources = {"captions": str(train_file), "images": str(source_dir(data_root, image_dir))}
    test_groups = None
    if test_file is not None:
        test_file = source_file(data_root, test_file, "MSCOCO", f"the test captions ({COCO_FORMAT})")
        sources |= {"test_captions": str(test_file), "test_images": str(source_dir(data_root, test_image_dir))}
        test_groups = _coco_groups(test_file, source_dir(data_root, test_image_dir), prompt)
    return ConversionPlan(
        dataset="MSCOCO",
        modality="image",
        task="caption",
        format=COCO_FORMAT,
        sources=sources,
        train_groups=_coco_groups(train_file, source_dir(data_root, image_dir), prompt),
        test_groups=test_groups,
        notes=["train: the first caption of every image; test: every caption of an image as references"],
    )


def _okvqa_groups(questions_path: Path, annotations_path: Path, image_dir: Path, template: str, instruction: str):
    def groups(counts: Counter):
        questions = read_json(questions_path, "OK-VQA", OKVQA_FORMAT)
        require_keys(questions, ("questions",), questions_path, "top level", "OK-VQA", OKVQA_FORMAT)
        annotations = read_json(annotations_path, "OK-VQA", OKVQA_FORMAT)
        require_keys(annotations, ("annotations",), annotations_path, "top level", "OK-VQA", OKVQA_FORMAT)
        answers = {}
        for index, annotation in enumerate(annotations["annotations"]):
            where = f"annotations[{index}]"
            require_keys(annotation, ("question_id", "answers"), annotations_path, where, "OK-VQA", OKVQA_FORMAT)
            for number, answer in enumerate(annotation["answers"]):
                where = f"annotations[{index}].answers[{number}]"
                require_keys(answer, ("answer",), annotations_path, where, "OK-VQA", OKVQA_FORMAT)
            answers[annotation["question_id"]] = [answer["answer"].strip() for answer in annotation["answers"]]
        counts["questions"] += len(questions["questions"])
        for index, question in enumerate(questions["questions"]):
            where = f"questions[{index}]"
            require_keys(
                question, ("question_id", "image_id", "question"), questions_path, where, "OK-VQA", OKVQA_FORMAT
            )
            question_id = question["question_id"]
            references = [answer for answer in answers.get(question_id, []) if answer]
            if not references:
                counts["questions without an annotated answer (dropped)"] += 1
                continue
            media = image_dir / template.format(image_id=question["image_id"])
            prompt = qa_prompt(question["question"], instruction)
            # The training answer is the annotators' most frequent one; scoring keeps all ten.
            answer = most_frequent(references)
            item = sample(f"okvqa-{question_id}", "image", media, prompt, answer, "qa", "OK-VQA")
            yield Group(key=str(question_id), train=[item], test={**item, "references": references})

    return groups


def convert_okvqa(
    data_root: Path,
    questions: str = "OpenEnded_mscoco_train2014_questions.json",
    annotations: str = "mscoco_train2014_annotations.json",
    image_dir: str = "train2014",
    image_template: str = "COCO_train2014_{image_id:012d}.jpg",
    test_questions: str | None = None,
    test_annotations: str = "mscoco_val2014_annotations.json",
    test_image_dir: str = "val2014",
    test_image_template: str = "COCO_val2014_{image_id:012d}.jpg",
    qa_instruction: str = DEFAULT_QA_INSTRUCTION,
) -> ConversionPlan:
    """
    OK-VQA: one sample per question; the answer is the most frequent of the ten annotated answers (all ten are kept
    as references for scoring).

    Files: `questions` + `annotations` (VQA v1/v2 style JSON); COCO images under `image_dir` named by
    `image_template` (often a COCO folder elsewhere: --option image_dir=/data/coco/train2014). Test: 1K questions of
    `test_questions` + `test_annotations` (default the val2014 files if present, images in `test_image_dir`), else 1K
    held out of the training questions.
    """
    expected = f"the training questions ({OKVQA_FORMAT})"
    train_questions = source_file(data_root, questions, "OK-VQA", expected)
    train_annotations = source_file(data_root, annotations, "OK-VQA", f"the training annotations ({OKVQA_FORMAT})")
    sources = {
        "questions": str(train_questions),
        "annotations": str(train_annotations),
        "images": str(source_dir(data_root, image_dir)),
    }
    test_file = optional_source_file(data_root, test_questions, ["OpenEnded_mscoco_val2014_questions.json"])
    test_groups = None
    if test_file is not None:
        test_file = source_file(data_root, test_file, "OK-VQA", f"the test questions ({OKVQA_FORMAT})")
        test_answers = source_file(data_root, test_annotations, "OK-VQA", f"the test annotations ({OKVQA_FORMAT})")
        sources |= {
            "test_questions": str(test_file),
            "test_annotations": str(test_answers),
            "test_images": str(source_dir(data_root, test_image_dir)),
        }
        test_groups = _okvqa_groups(
            test_file, test_answers, source_dir(data_root, test_image_dir), test_image_template, qa_instruction
        )
    return ConversionPlan(
        dataset="OK-VQA",
        modality="image",
        task="qa",
        format=OKVQA_FORMAT,
        sources=sources,
        train_groups=_okvqa_groups(
            train_questions, train_annotations, source_dir(data_root, image_dir), image_template, qa_instruction
        ),
        test_groups=test_groups,
        notes=["answer: the most frequent of the annotated answers; references: all of them (ties: first listed)"],
    )
