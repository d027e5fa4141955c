"""Judged QA accuracy as an `evaluate` metric module: `evaluate.load` on this file's path gives the metric that the
evaluation loop itself uses (`generation.score_predictions`). It is a thin layer: the judges, their failure
accounting and their verdict cache live in `judges`.

Example:

```python
>>> import evaluate
>>> import trainers.evaluation.qa_judge
>>> qa = evaluate.load(trainers.evaluation.qa_judge.__file__)
>>> qa.compute(predictions=["2 dogs"], references=[["two"]], questions=["How many dogs?"], judge="match")["accuracy"]
1.0
```
"""

# Absolute imports: `evaluate.load` copies this file alone into its modules cache and imports it from there, so a
# relative import would load a second copy of the judges (and a `Judge` passed in would not be recognised).
import datasets
import evaluate

from trainers.evaluation.judges import get_judge, score_qa

_CITATION = """\
@article{maaz2023videochatgpt,
  title   = {Video-ChatGPT: Towards Detailed Video Understanding via Large Vision and Language Models},
  author  = {Maaz, Muhammad and Rasheed, Hanoona and Khan, Salman and Khan, Fahad Shahbaz},
  journal = {arXiv preprint arXiv:2306.05424},
  year    = {2023}
}
"""

_DESCRIPTION = """\
Accuracy of free-form answers to questions, decided by a judge, as MERA's paper scores its QA sets. The `gpt` judge
asks an LLM behind any OpenAI-compatible server with the Video-ChatGPT evaluation prompt for a yes/no verdict and a
0-5 score; replies it cannot parse are retried, then counted as judge failures, which count neither as right nor as
wrong. The `match` judge is offline: a reference answer, normalised (lower case, no articles or punctuation, number
words as digits), equals the normalised prediction or occurs in it as a whole-word sequence. `auto` picks `gpt` when
OPENAI_API_KEY is set and `match` otherwise.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one predicted answer per question.
    references (`list` of `list` of `str`): the acceptable answers of each question.
    questions (`list` of `str`): the questions, which the `gpt` judge reads.
    judge (`str` or `trainers.evaluation.judges.Judge`, defaults to "auto"): "match", "gpt", "auto", or a judge.
    judge_kwargs (`dict`, optional): arguments of the judge built by name, e.g. {"model": "gpt-4o-mini",
        "base_url": "http://localhost:8000/v1"}.
Returns:
    accuracy (`float` or `None`): the fraction of "yes" among the questions the judge could decide.
    mean_score (`float` or `None`): the mean 0-5 score, for judges that give one.
    num_samples, num_judged, num_failures (`int`): questions, decided questions, judge failures.
    judge (`str`): the judge that decided, e.g. "gpt:gpt-4o-mini".
    verdicts (`list` of `dict`): each question's verdict.
Examples:
    >>> qa = evaluate.load("trainers/evaluation/qa_judge.py")
    >>> qa.compute(predictions=["yes, it is red"], references=[["yes"]], questions=["Is it red?"],
    ...            judge="match")["accuracy"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class QaJudge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                    "questions": datasets.Value("string"),
                }
            ),
            codebase_urls=["https://github.com/mbzuai-oryx/Video-ChatGPT"],
            reference_urls=["https://arxiv.org/abs/2306.05424"],
        )

    def _compute(self, predictions, references, questions, judge="auto", judge_kwargs=None):
        if judge is None or isinstance(judge, str):
            judge = get_judge(judge, **(judge_kwargs or {}))
        elif judge_kwargs:
            raise ValueError("judge_kwargs configure a judge built by name; pass either a judge object or a name.")
        result = score_qa(judge, questions, references, predictions)
        result.pop("metric", None)
        return result
