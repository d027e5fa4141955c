"""
The offline domain benchmark behind `mera demo --scenario domain`: four synthetic image domains, learnt one after
another through the same image modality, as in MLLM-CL's domain continual learning (remote sensing, medical,
autonomous driving, finance). Each domain is a QA data set with its own pictures, its own questions and its own
answer words; every answer is read off the picture, and within each question every answer is equally frequent, so
that a model that ignores the image answers at chance (`majority_baseline`).

    aerial   an aerial photo: forest, desert or water ground; one to three grey roofs
             "what covers the ground in the aerial photo ?" / "how many roofs does the aerial photo show ?"
    scan     a grey scan of a round, tall or wide organ, with a dark lesion in its upper or lower half, or none
             "which organ outline does the scan show ?" / "where is the lesion in the scan ?"
    road     a road seen from the driver's seat: a traffic light showing stop, wait or go; a car in one of three lanes
             "what does the traffic light signal ?" / "which lane is the car driving in ?"
    chart    a bar chart of four bars, one of them the highest, under a rising or falling trend line
             "which bar of the chart is highest ?" / "is the trend line rising or falling ?"

The files follow the four-modality benchmark's layout (`trainers.demo.benchmark`): `build_benchmark(out,
modalities=DOMAINS)` writes `<domain>/train.jsonl`, `<domain>/test.jsonl` and the manifest; every row's modality is
"image" and its data set `<domain>-qa`.
"""

import numpy as np
from PIL import Image, ImageDraw

from .benchmark import SYNTHETIC_SETS, Question, SyntheticModality

DOMAINS = ("aerial", "scan", "road", "chart")


class _ImageDomain(SyntheticModality):
    """A QA-only domain of the image modality: pictures written as PNG."""

    suffix = ".png"
    caption_prompt = None

    @property
    def modality(self) -> str:
        return "image"

    def write(self, media, path, sizes):
        media.save(path, format="PNG")


def _noise(rng: np.random.Generator, size: int, mean, spread: float) -> np.ndarray:
    return np.clip(rng.normal(mean, spread, (size, size, 3)), 0, 255)


GROUNDS = {"forest": (40, 110, 45), "desert": (210, 180, 110), "water": (40, 80, 170)}


class AerialDomain(_ImageDomain):
    """Remote sensing: the ground's colour and texture, and one to three grey roofs in distinct cells of a 2x2 grid."""

    name = "aerial"
    stream = 10
    attributes = {"ground": tuple(GROUNDS), "roofs": ("one", "two", "three")}
    questions = (
        Question("ground", "what covers the ground in the aerial photo ?"),
        Question("roofs", "how many roofs does the aerial photo show ?"),
    )

    def render(self, attributes, rng, sizes):
        size = sizes.image_size
        image = Image.fromarray(_noise(rng, size, GROUNDS[attributes["ground"]], 18).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        count = ("one", "two", "three").index(attributes["roofs"]) + 1
        for cell in sorted(rng.permutation(4)[:count].tolist()):
            x = (cell % 2 + 0.5) * size / 2 + rng.uniform(-0.05, 0.05) * size
            y = (cell // 2 + 0.5) * size / 2 + rng.uniform(-0.05, 0.05) * size
            half = rng.uniform(0.12, 0.16) * size
            grey = int(rng.integers(150, 200))
            draw.rectangle([x - half, y - half, x + half, y + half], fill=(grey, grey, grey + 10))
        return image


ORGANS = {"round": (0.34, 0.34), "tall": (0.22, 0.42), "wide": (0.44, 0.22)}


class ScanDomain(_ImageDomain):
    """Medical: a bright organ outline (round, tall or wide) on black, a dark lesion in its upper or lower half."""

    name = "scan"
    stream = 11
    attributes = {"organ": tuple(ORGANS), "lesion": ("upper", "lower", "none")}
    questions = (
        Question("organ", "which organ outline does the scan show ?"),
        Question("lesion", "where is the lesion in the scan ?"),
    )

    def render(self, attributes, rng, sizes):
        size = sizes.image_size
        grey = _noise(rng, size, 15, 5)[..., :1].repeat(3, axis=2)
        image = Image.fromarray(grey.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        centre = size / 2 + rng.uniform(-0.04, 0.04, 2) * size
        half_w, half_h = (np.array(ORGANS[attributes["organ"]]) * rng.uniform(0.92, 1.08) * size).tolist()
        level = int(rng.integers(170, 230))
        draw.ellipse([centre[0] - half_w, centre[1] - half_h, centre[0] + half_w, centre[1] + half_h],
                     fill=(level, level, level))  # fmt: skip
        if attributes["lesion"] != "none":
            side = -1 if attributes["lesion"] == "upper" else 1
            x, y = centre[0] + rng.uniform(-0.3, 0.3) * half_w, centre[1] + side * 0.5 * half_h
            radius = rng.uniform(0.08, 0.1) * size
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(40, 40, 40))
        return image


SIGNALS = {"stop": (230, 30, 30), "wait": (240, 170, 20), "go": (30, 220, 60)}
LANES = ("left", "middle", "right")


class RoadDomain(_ImageDomain):
    """Autonomous driving: a grey road in three lanes, a traffic light lit in one colour, a coloured car in a lane."""

    name = "road"
    stream = 12
    attributes = {"signal": tuple(SIGNALS), "lane": LANES}
    questions = (
        Question("signal", "what does the traffic light signal ?"),
        Question("lane", "which lane is the car driving in ?"),
    )

    def render(self, attributes, rng, sizes):
        size = sizes.image_size
        pixels = _noise(rng, size, (110, 160, 220), 6)  # sky
        pixels[size // 3 :] = _noise(rng, size, (90, 90, 90), 6)[size // 3 :]  # road
        image = Image.fromarray(pixels.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for boundary in (1, 2):
            x = boundary * size / 3
            draw.line([(x, size / 3), (x, size)], fill=(235, 235, 235), width=1)
        light_x = rng.uniform(0.05, 0.2) * size if rng.random() < 0.5 else rng.uniform(0.7, 0.85) * size
        draw.rectangle([light_x, 0, light_x + 0.14 * size, 0.3 * size], fill=(25, 25, 25))
        glow = SIGNALS[attributes["signal"]]
        draw.ellipse([light_x + 0.02 * size, 0.07 * size, light_x + 0.12 * size, 0.2 * size], fill=glow)
        lane = LANES.index(attributes["lane"])
        x = (lane + 0.5) * size / 3 + rng.uniform(-0.03, 0.03) * size
        y = rng.uniform(0.6, 0.75) * size
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.rectangle([x - 0.11 * size, y - 0.09 * size, x + 0.11 * size, y + 0.09 * size], fill=colour)
        return image


POSITIONS = ("first", "second", "third", "fourth")


class ChartDomain(_ImageDomain):
    """Finance: four bars on white, one clearly highest, and a thick trend line rising or falling across the chart."""

    name = "chart"
    stream = 13
    attributes = {"highest": POSITIONS, "trend": ("rising", "falling")}
    questions = (
        Question("highest", "which bar of the chart is highest ?"),
        Question("trend", "is the trend line rising or falling ?"),
    )

    def render(self, attributes, rng, sizes):
        size = sizes.image_size
        image = Image.fromarray(_noise(rng, size, 245, 4).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        heights = rng.uniform(0.2, 0.5, 4)
        heights[POSITIONS.index(attributes["highest"])] = rng.uniform(0.8, 0.9)
        for index, height in enumerate(heights):
            left = (index * 0.25 + 0.03) * size
            draw.rectangle([left, size * (1 - height), left + 0.19 * size, size - 1], fill=(60, 90, 160))
        low, high = rng.uniform(0.7, 0.8) * size, rng.uniform(0.1, 0.2) * size
        start, end = (low, high) if attributes["trend"] == "rising" else (high, low)
        draw.line([(0, start), (size - 1, end)], fill=(220, 40, 40), width=3)
        return image


SYNTHETIC_DOMAINS: dict[str, SyntheticModality] = {
    domain.name: domain for domain in (AerialDomain(), ScanDomain(), RoadDomain(), ChartDomain())
}
SYNTHETIC_SETS.update(SYNTHETIC_DOMAINS)

__all__ = ["DOMAINS", "SYNTHETIC_DOMAINS"]
