"""CIDEr-D: our pure-Python scorer against pycocoevalcap's `Cider` on identical tokens, and the tokenizer."""

import random

import pytest

from trainers.evaluation.cider import compute_cider, score_captions, tokenize_caption

SUBJECTS = [
    ("a", "man"),
    ("a", "woman"),
    ("a", "young boy"),
    ("a", "little girl"),
    ("a", "brown dog"),
    ("a", "black cat"),
    ("two", "children"),
    ("a", "group of people"),
    ("an", "old man"),
    ("a", "horse"),
    ("a", "surfer"),
    ("a", "skateboarder"),
    ("three", "zebras"),
    ("a", "large elephant"),
    ("a", "chef"),
]
ACTIONS = [
    "is riding a bike",
    "is playing frisbee",
    "is eating a sandwich",
    "are standing",
    "is sleeping",
    "is running",
    "is holding an umbrella",
    "is sitting on a bench",
    "is walking",
    "is jumping over a fence",
    "is cutting vegetables",
    "is riding a wave",
    "is looking at the camera",
    "is drinking water",
]
PLACES = [
    "in the park",
    "on the beach",
    "down the street",
    "in a kitchen",
    "next to a red car",
    "on a snowy hill",
    "near the river",
    "in a grassy field",
    "at the zoo",
    "inside a small room",
    "under a tree",
    "by the window",
]
EXTRAS = ["", "", "on a sunny day", "at night", "while it rains", "with a friend", "in front of a building"]
STYLES = ["plain", "capitalised", "period", "comma", "contraction", "parenthesis"]


def compose_caption(rng: random.Random, subject, action, place) -> str:
    """One natural-looking caption about a scene, in one of several surface styles."""
    determiner, noun = subject
    if rng.random() < 0.3:
        determiner = {"a": "one", "an": "one", "two": "a pair of", "three": "some"}[determiner]
    extra = rng.choice(EXTRAS)
    words = f"{determiner} {noun} {action} {place}" + (f" {extra}" if extra else "")
    style = rng.choice(STYLES)
    if style == "capitalised":
        return words[0].upper() + words[1:]
    if style == "period":
        return words[0].upper() + words[1:] + "."
    if style == "comma":
        return f"{determiner} {noun}, {action} {place}."
    if style == "contraction":
        return f"There's {determiner} {noun} that {action} {place}"
    return f"{words} (photo)"


def make_caption_set(num_images: int = 60, seed: int = 0):
    """Deterministic test set: per image 3-6 references about one scene; predictions of varied quality."""
    rng = random.Random(seed)
    predictions, references = [], []
    for _ in range(num_images):
        scene = (rng.choice(SUBJECTS), rng.choice(ACTIONS), rng.choice(PLACES))
        refs = []
        for _ in range(rng.randint(3, 6)):
            # References mostly describe the scene, sometimes with another action or place, like annotators do.
            subject, action, place = scene
            if rng.random() < 0.3:
                action = rng.choice(ACTIONS)
            if rng.random() < 0.3:
                place = rng.choice(PLACES)
            refs.append(compose_caption(rng, subject, action, place))
        quality = rng.random()
        if quality < 0.2:
            prediction = rng.choice(refs)  # copies a reference
        elif quality < 0.7:
            prediction = compose_caption(rng, *scene)  # right scene, own wording
        elif quality < 0.9:
            prediction = compose_caption(rng, rng.choice(SUBJECTS), rng.choice(ACTIONS), rng.choice(PLACES))
        else:
            prediction = rng.choice(["a picture", "an image of something", "two two two two", "the"])
        predictions.append(prediction)
        references.append(refs)
    return predictions, references


def test_tokenizer_matches_ptb_conventions():
    assert tokenize_caption("A man's dog, running.") == "a man 's dog running"
    assert tokenize_caption("They don't see it!") == "they do n't see it"
    assert (
        tokenize_caption('A "black-and-white" photo (old) of 3.5 cats...') == "a black-and-white photo old of 3.5 cats"
    )
    assert tokenize_caption("Two dogs;  one cat:\nA bird?") == "two dogs one cat a bird"
    assert tokenize_caption("") == ""


def test_cider_equals_pycocoevalcap_on_generated_captions():
    pytest.importorskip("pycocoevalcap", reason="pycocoevalcap comes with the `test` extra")
    from pycocoevalcap.cider.cider import Cider

    predictions, references = make_caption_set(num_images=60)
    assert len(predictions) >= 50 and all(len(refs) >= 3 for refs in references)
    tokenized_predictions = [tokenize_caption(caption) for caption in predictions]
    tokenized_references = [[tokenize_caption(ref) for ref in refs] for refs in references]

    gts = {index: refs for index, refs in enumerate(tokenized_references)}
    res = {index: [caption] for index, caption in enumerate(tokenized_predictions)}
    expected_corpus, expected_per_image = Cider().compute_score(gts, res)

    corpus, per_image = compute_cider(tokenized_predictions, tokenized_references, tokenize=False)
    assert len(per_image) == len(expected_per_image)
    max_abs_diff = max(abs(ours - theirs) for ours, theirs in zip(per_image, expected_per_image))
    assert max_abs_diff < 1e-6
    assert corpus == pytest.approx(float(expected_corpus), abs=1e-6)
    # The set is varied enough to exercise the whole range: zeros, partial matches and near-copies.
    assert min(per_image) == 0.0 and max(per_image) > 2.0 and 0.3 < corpus < 6.0

    # Tokenising inside compute_cider gives the same numbers as tokenising first.
    corpus_raw, per_image_raw = compute_cider(predictions, references)
    assert corpus_raw == pytest.approx(corpus, abs=1e-12)
    assert per_image_raw == pytest.approx(per_image, abs=1e-12)


def test_cider_prefers_the_right_caption():
    predictions, references = make_caption_set(num_images=20, seed=1)
    good = [refs[0] for refs in references]
    wrong = good[1:] + good[:1]  # every image gets another image's caption
    good_score, _ = compute_cider(good, references)
    wrong_score, _ = compute_cider(wrong, references)
    assert good_score > 3 * wrong_score


def test_score_captions_reports_paper_scale_and_accepts_single_references():
    result = score_captions(["a dog runs", "a cat sleeps", "a bird flies"], ["a dog runs", ["a cat sleeps"], ["x y"]])
    corpus, per_sample = compute_cider(
        ["a dog runs", "a cat sleeps", "a bird flies"], [["a dog runs"], ["a cat sleeps"], ["x y"]]
    )
    assert result["score"] == pytest.approx(100 * corpus)
    assert result["per_sample"] == pytest.approx([100 * value for value in per_sample])
    assert result["num_samples"] == 3 and result["metric"] == "cider"


def test_cider_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="2 predictions but 1 reference"):
        compute_cider(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"references\[0\] must be a non-empty list"):
        compute_cider(["a"], [[]])
    with pytest.raises(ValueError, match=r"references\[0\] must be a non-empty list"):
        compute_cider(["a"], ["a dog"])
