"""CIDEr-D as an `evaluate` metric module: `evaluate.load` on this file's path gives the metric that the evaluation
loop itself uses (`generation.score_predictions`), a thin layer over `cider.score_captions`.

Example:

```python
>>> import evaluate
>>> import trainers.evaluation.cider_d
>>> cider = evaluate.load(trainers.evaluation.cider_d.__file__)
>>> cider.compute(predictions=["a dog runs"], references=[["a dog is running", "a brown dog runs"]])["cider_d"]
```
"""

# Absolute imports: `evaluate.load` copies this file alone into its modules cache and imports it from there, so a
# relative import would load a second copy of the implementation.
import datasets
import evaluate

from trainers.evaluation.cider import score_captions

_CITATION = """\
@inproceedings{vedantam2015cider,
  title     = {CIDEr: Consensus-based Image Description Evaluation},
  author    = {Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {4566--4575},
  year      = {2015}
}
"""

_DESCRIPTION = """\
CIDEr-D (Vedantam et al., 2015) scores a generated caption by the tf-idf weighted n-gram (n = 1..4) cosine similarity
with its reference captions, with clipped n-gram counts and a Gaussian penalty on the length difference. It equals
pycocoevalcap's `Cider` scorer on identical tokens (to 1e-6), runs offline and needs no Java: captions are tokenised
like the PTB tokenizer (lower case, contractions split off, punctuation dropped). Document frequencies come from the
references of the scored set, so a caption's score depends on the whole set. Scores are on the scale papers report
(100 x pycocoevalcap's value).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one generated caption per sample.
    references (`list` of `list` of `str`, or `list` of `str`): the reference captions of each sample.
    n (`int`, defaults to 4): highest n-gram order.
    sigma (`float`, defaults to 6.0): standard deviation of the Gaussian length penalty.
Returns:
    cider_d (`float`): the corpus score, the mean of the per-sample scores (x 100).
    per_sample (`list` of `float`): each sample's CIDEr-D (x 100).
Examples:
    >>> cider = evaluate.load("trainers/evaluation/cider_d.py")
    >>> result = cider.compute(predictions=["a cat sleeps on a sofa", "a dog runs"],
    ...                        references=[["a cat is sleeping on a sofa"], ["a dog is running", "a brown dog runs"]])
    >>> sorted(result)
    ['cider_d', 'per_sample']
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CiderD(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            codebase_urls=["https://github.com/tylin/coco-caption", "https://github.com/salaniz/pycocoevalcap"],
            reference_urls=["https://arxiv.org/abs/1411.5726"],
        )

    def _compute(self, predictions, references, n: int = 4, sigma: float = 6.0):
        result = score_captions(predictions, references, n=n, sigma=sigma)
        return {"cider_d": result["score"], "per_sample": result["per_sample"]}
