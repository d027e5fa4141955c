"""Judges that decide whether a predicted answer to a question matches the reference answer.

Two judges are registered:

- `gpt`: an LLM judge through any OpenAI-compatible server, with the paper's prompt (a yes/no verdict and a 0-5
  score, returned as a Python-dict-like string). Replies that cannot be parsed are retried, then counted as judge
  failures, which are reported apart from "no" verdicts; so is a request that fails (server errors, time-outs,
  a reply that is not a chat completion, such as an HTML page with status 200). Successful verdicts are cached on
  disk under a key that covers everything that can change a verdict (model, server, temperature, prompts,
  question, reference, prediction), so re-scoring costs nothing; failures are never cached.
- `match`: an offline judge, normalised exact or contained match ("Two dogs." == "2 dogs"). It is the default when
  no `OPENAI_API_KEY` is set.

Every `Verdict` and every `score_qa` result names the judge that produced it.

Example:

```python
>>> from trainers.evaluation.judges import get_judge, score_qa
>>> judge = get_judge("match")
>>> score_qa(judge, questions=["How many dogs?"], answers=["two"], predictions=["2 dogs"])["accuracy"]
1.0
```
"""

import ast
import hashlib
import inspect
import json
import os
import re
import string
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import UserError

__all__ = [
    "Verdict",
    "Judge",
    "MatchJudge",
    "GPTJudge",
    "JUDGES",
    "get_judge",
    "score_qa",
    "DEFAULT_MAX_FAILURE_RATE",
    "JudgeFailureError",
    "check_failure_rate",
    "judge_failures",
    "format_judge_failures",
]

DEFAULT_MAX_FAILURE_RATE = 0.05
"""The share of failed verdicts a QA test set may have before its score is refused (see `check_failure_rate`)."""

Answer = str | Sequence[str]


@dataclass(frozen=True)
class Verdict:
    """The judgement of one predicted answer.

    `correct` is `None` when the judge failed (`failed=True`, reason in `error`); such a verdict counts neither as
    right nor as wrong.
    """

    correct: bool | None
    judge: str
    score: float | None = None
    failed: bool = False
    reply: str | None = None
    error: str | None = None
    cached: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class Judge(ABC):
    """Base class: subclasses implement `judge`; `judge_many` runs it over a test set."""

    name: str

    @property
    def description(self) -> str:
        """What is recorded with every score, e.g. `"gpt:gpt-4o-mini"`."""
        return self.name

    @abstractmethod
    def judge(self, question: str, answer: Answer, prediction: str) -> Verdict: ...

    def judge_many(
        self, questions: Sequence[str], answers: Sequence[Answer], predictions: Sequence[str]
    ) -> list[Verdict]:
        _check_lengths(questions, answers, predictions)
        return [self.judge(q, a, p) for q, a, p in zip(questions, answers, predictions)]


def _check_lengths(questions, answers, predictions) -> None:
    if not len(questions) == len(answers) == len(predictions):
        raise ValueError(
            f"Judging needs one question, answer and prediction per sample; got {len(questions)} questions, "
            f"{len(answers)} answers and {len(predictions)} predictions."
        )


def _as_answer_list(answer: Answer) -> list[str]:
    return [answer] if isinstance(answer, str) else [str(a) for a in answer]


# ---------------------------------------------------------------------------------------------------------------
# match: offline normalised matching
# ---------------------------------------------------------------------------------------------------------------

NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70"})
NUMBER_WORDS.update({"eighty": "80", "ninety": "90", "hundred": "100"})
ARTICLES = frozenset({"a", "an", "the"})
# Every symbol but a decimal point inside a number (3.5).
_PUNCTUATION = re.compile(r"[^\w\s.]|_|(?<!\d)\.|\.(?!\d)")


def normalize_answer(text: str) -> list[str]:
    """Lower case, punctuation and articles removed, number words as digits; returns the tokens."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.lower())  # 1,000 -> 1000
    text = _PUNCTUATION.sub(" ", text)
    return [NUMBER_WORDS.get(token, token) for token in text.split() if token not in ARTICLES]


def _contains(haystack: list[str], needle: list[str]) -> bool:
    width = len(needle)
    return any(haystack[i : i + width] == needle for i in range(len(haystack) - width + 1))


class MatchJudge(Judge):
    """Correct when a reference answer, normalised, equals the normalised prediction or occurs in it as a
    whole-word sequence ("yes" in "yes, it is"; "2" in "there are two dogs").

    Offline and deterministic, but lenient with long predictions that list many candidates: prefer the `gpt` judge
    for numbers you will publish. `answers` may hold several acceptable answers per sample (as in OK-VQA).
    """

    name = "match"

    def judge(self, question: str, answer: Answer, prediction: str) -> Verdict:
        predicted = normalize_answer(prediction)
        for reference in _as_answer_list(answer):
            expected = normalize_answer(reference)
            if expected and (predicted == expected or _contains(predicted, expected)):
                return Verdict(correct=True, judge=self.description)
        return Verdict(correct=False, judge=self.description)


# ---------------------------------------------------------------------------------------------------------------
# gpt: an LLM judge behind any OpenAI-compatible API
# ---------------------------------------------------------------------------------------------------------------

JUDGE_SYSTEM_PROMPT = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for "
    "question-answer pairs. Your task is to compare the predicted answer with the correct answer and determine if "
    "they match meaningfully. Here's how you can accomplish the task:\n"
    "------\n"
    "##INSTRUCTIONS:\n"
    "- Focus on the meaningful match between the predicted answer and the correct answer.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)
JUDGE_USER_PROMPT = (
    "Please evaluate the following question-answer pair:\n\n"
    "Question: {question}\n"
    "Correct Answer: {answer}\n"
    "Predicted Answer: {prediction}\n\n"
    "Provide your evaluation only as a yes/no and score where the score is an integer value between 0 and 5, with "
    "5 indicating the highest meaningful match. Please generate the response in the form of a Python dictionary "
    "string with keys 'pred' and 'score', where value of 'pred' is a string of 'yes' or 'no' and value of 'score' is "
    "in INTEGER, not STRING. DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python "
    "dictionary string. For example, your response should look like this: {{'pred': 'yes', 'score': 4}}."
)
PROMPT_FIELDS = ("question", "answer", "prediction")


def check_user_prompt(user_prompt: str) -> str:
    """A judge's user prompt is a `str.format` template of {question}, {answer} and {prediction}."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(user_prompt) if name is not None}
    except ValueError as error:
        raise ValueError(
            f"user_prompt is not a valid format template ({error}); write literal braces as {{{{ }}}}"
        ) from None
    unknown, missing = sorted(fields - set(PROMPT_FIELDS)), [f for f in ("answer", "prediction") if f not in fields]
    if unknown or missing:
        raise ValueError(
            f"user_prompt may use the fields {{question}}, {{answer}}, {{prediction}} and must use {{answer}} and "
            f"{{prediction}}; it has unknown {unknown} and lacks {missing} (write literal braces as {{{{ }}}})"
        )
    return user_prompt


_DICT_IN_REPLY = re.compile(r"\{.*?\}", re.DOTALL)


def parse_judge_reply(reply: str) -> tuple[bool, float]:
    """`(correct, score)` from a reply such as `"{'pred': 'yes', 'score': 4}"`; `ValueError` if malformed."""
    match = _DICT_IN_REPLY.search(reply or "")
    if match is None:
        raise ValueError(f"no dictionary in the judge's reply {reply!r}")
    try:
        parsed = ast.literal_eval(match.group(0))
    except (ValueError, SyntaxError) as error:
        raise ValueError(f"the judge's reply {reply!r} is not a Python dictionary: {error}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"the judge's reply {reply!r} is not a Python dictionary")
    pred = str(parsed.get("pred", "")).strip().lower()
    if pred not in ("yes", "no"):
        raise ValueError(f"'pred' in the judge's reply {reply!r} is neither 'yes' nor 'no'")
    try:
        score = float(parsed.get("score"))
    except (TypeError, ValueError):
        raise ValueError(f"'score' in the judge's reply {reply!r} is not a number") from None
    if not 0 <= score <= 5:
        raise ValueError(f"'score' in the judge's reply {reply!r} is outside 0-5")
    return pred == "yes", score


def default_cache_file() -> Path:
    root = os.environ.get("MERA_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mera"
    return Path(root) / "judge_verdicts.jsonl"


class VerdictCache:
    """Append-only JSON-lines file of successful verdicts, keyed by a hash of everything the judge saw.

    Failures are not stored, so a re-run retries them. A line cut short by a killed run is skipped on load.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        if self.path.exists():
            with self.path.open(encoding="utf-8") as file:
                for line in file:
                    try:
                        entry = json.loads(line)
                        self._entries[entry["key"]] = entry
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue

    @staticmethod
    def key(
        model: str,
        base_url: str,
        temperature: float,
        system_prompt: str,
        user_prompt: str,
        question: str,
        answer: str,
        prediction: str,
    ) -> str:
        """A hash of everything that can change a verdict: who judges (model, server, temperature) and what."""
        fields = [model, base_url, float(temperature), system_prompt, user_prompt, question, answer, prediction]
        payload = json.dumps(fields, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict | None:
        entry = self._entries.get(key)
        # Only successful verdicts are written; anything else in the file (e.g. from an older version) is ignored.
        if entry is None or not isinstance(entry.get("correct"), bool) or entry.get("score") is None:
            return None
        return entry

    def put(self, key: str, reply: str, correct: bool, score: float) -> None:
        entry = {"key": key, "reply": reply, "correct": correct, "score": score}
        with self._lock:
            self._entries[key] = entry
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def __len__(self) -> int:
        return len(self._entries)


def _reply_text(response) -> str:
    """The text of a chat completion; `ValueError` for anything else (e.g. the text of an HTML page, which the
    `openai` client returns as a plain string when the server answers 200 with a non-JSON body)."""
    choices = getattr(response, "choices", None)
    if not choices:
        shown = str(response)[:200]
        raise ValueError(f"the judge server's answer is not a chat completion: {shown!r}")
    content = getattr(getattr(choices[0], "message", None), "content", None)
    if not isinstance(content, str):
        raise ValueError(f"the judge server's answer holds no message text: {str(choices[0])[:200]!r}")
    return content


class GPTJudge(Judge):
    """LLM judge with the paper's prompt, through the `openai` client (any OpenAI-compatible server).

    Args:
        model: judge model; the paper used `gpt-4o-mini`.
        base_url: server URL, e.g. `http://localhost:8000/v1` for a local vLLM; `None` is OpenAI's API (or
            `OPENAI_BASE_URL`).
        api_key: `None` reads `OPENAI_API_KEY`.
        retries: how many more times to ask when a reply cannot be parsed; after that, the sample is a judge failure.
        concurrency: parallel requests in `judge_many`.
        cache_file: JSON-lines verdict cache; `None` uses `$MERA_CACHE/judge_verdicts.jsonl`
            (default `~/.cache/mera/`).
        use_cache: set to `False` to neither read nor write the cache.
        temperature: sampling temperature of the judge.
        timeout: seconds per request.
        client_max_retries: the `openai` client's own retries on connection errors, 429 and 5xx.
        progress: show a progress bar in `judge_many`.
        system_prompt, user_prompt: the judge's instructions and the per-sample template (with {question},
            {answer}, {prediction}); the paper's by default.
    """

    name = "gpt"

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        base_url: str | None = None,
        api_key: str | None = None,
        retries: int = 2,
        concurrency: int = 8,
        cache_file: str | os.PathLike | None = None,
        use_cache: bool = True,
        temperature: float = 0.0,
        timeout: float = 60.0,
        client_max_retries: int = 3,
        progress: bool = True,
        system_prompt: str = JUDGE_SYSTEM_PROMPT,
        user_prompt: str = JUDGE_USER_PROMPT,
    ):
        self.system_prompt, self.user_prompt = system_prompt, check_user_prompt(user_prompt)
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}.")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}.")
        try:
            import openai
        except ImportError:
            raise ImportError(
                "The `gpt` judge needs the `openai` package: pip install 'mera-mcl[eval]' (or use the `match` judge)."
            ) from None
        self._openai = openai
        self.model = model
        self.retries = retries
        self.concurrency = concurrency
        self.temperature = temperature
        self.progress = progress
        self.client = openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=client_max_retries
        )
        self.cache = VerdictCache(cache_file or default_cache_file()) if use_cache else None

    @property
    def description(self) -> str:
        return f"{self.name}:{self.model}"

    def judge(self, question: str, answer: Answer, prediction: str) -> Verdict:
        answer_text = " / ".join(_as_answer_list(answer))
        user_prompt = self.user_prompt.format(question=question, answer=answer_text, prediction=prediction)
        key = VerdictCache.key(
            self.model,
            str(self.client.base_url),
            self.temperature,
            self.system_prompt,
            user_prompt,
            question,
            answer_text,
            prediction,
        )
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return Verdict(hit["correct"], self.description, hit["score"], reply=hit["reply"], cached=True)

        reply, error = None, None
        for _ in range(self.retries + 1):
            try:
                response = self.client.chat.completions.create(
                    model=self.model,
                    messages=[
                        {"role": "system", "content": self.system_prompt},
                        {"role": "user", "content": user_prompt},
                    ],
                    temperature=self.temperature,
                )
            except (self._openai.AuthenticationError, self._openai.PermissionDeniedError, self._openai.NotFoundError):
                raise  # a wrong key, model or URL fails every sample: stop instead of reporting failures
            except Exception as request_error:  # noqa: BLE001 - the HTTP boundary: anything here is a failed request
                # The client has already retried transport errors and 5xx answers. A server that answers 200 with a
                # body that is not JSON (an HTML error page) raises a decoding error here: a failure too.
                error = f"request failed: {type(request_error).__name__}: {request_error}"
                return Verdict(None, self.description, failed=True, error=error)
            try:
                reply = _reply_text(response)
                correct, score = parse_judge_reply(reply)
            except ValueError as parse_error:
                error = str(parse_error)
                continue
            if self.cache is not None:
                self.cache.put(key, reply, correct, score)
            return Verdict(correct, self.description, score, reply=reply)
        return Verdict(
            None, self.description, failed=True, reply=reply, error=f"{error} (after {self.retries + 1} attempts)"
        )

    def judge_many(
        self, questions: Sequence[str], answers: Sequence[Answer], predictions: Sequence[str]
    ) -> list[Verdict]:
        _check_lengths(questions, answers, predictions)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            jobs = pool.map(self.judge, questions, answers, predictions)
            return list(tqdm(jobs, total=len(questions), desc="judging", disable=not self.progress))


JUDGES: dict[str, type[Judge]] = {"match": MatchJudge, "gpt": GPTJudge}


def get_judge(name: str | None = None, **kwargs) -> Judge:
    """Build a judge by name (`"match"` or `"gpt"`, keyword arguments go to its constructor).

    `None` or `"auto"` picks `gpt` when `OPENAI_API_KEY` is set and `match` otherwise.
    """
    if name in (None, "auto"):
        name = "gpt" if os.environ.get("OPENAI_API_KEY") else "match"
    if name not in JUDGES:
        raise ValueError(f"Unknown judge {name!r}; choose one of {sorted(JUDGES)} (or 'auto').")
    return JUDGES[name](**kwargs)


def check_judge_args(name: str | None, judge_args: dict | None) -> None:
    """Refuse `judge_args` the judge `name` does not take (before anything runs), and any API key: keys come from
    the environment (`OPENAI_API_KEY`), never from a config file."""
    if not judge_args:
        return
    if not isinstance(judge_args, dict):
        raise ValueError(f"judge_args must be a mapping of judge settings, got {judge_args!r}")
    if "api_key" in judge_args:
        raise ValueError("judge_args: an API key does not belong in a config file; set OPENAI_API_KEY instead")
    classes = [JUDGES[name]] if name in JUDGES else list(JUDGES.values())  # None / "auto": either may run
    accepted = set.union(*(set(inspect.signature(cls.__init__).parameters) - {"self", "api_key"} for cls in classes))
    unknown = sorted(set(judge_args) - accepted)
    if unknown:
        raise ValueError(f"judge_args {unknown} are not settings of the {name!r} judge; it takes {sorted(accepted)}")
    if "user_prompt" in judge_args:
        check_user_prompt(judge_args["user_prompt"])


def score_qa(judge: Judge, questions: Sequence[str], answers: Sequence[Answer], predictions: Sequence[str]) -> dict:
    """Judge a QA test set. Accuracy is the fraction of "yes" among the samples the judge could decide.

    Returns a dict with `accuracy`, `mean_score` (when the judge gives scores), `num_samples`, `num_judged`,
    `num_failures`, the `judge` description and the per-sample `verdicts`.
    """
    verdicts = judge.judge_many(questions, answers, predictions)
    judged = [verdict for verdict in verdicts if not verdict.failed]
    scores = [verdict.score for verdict in judged if verdict.score is not None]
    return {
        "metric": "accuracy",
        "judge": judge.description,
        "accuracy": sum(verdict.correct for verdict in judged) / len(judged) if judged else None,
        "mean_score": sum(scores) / len(scores) if scores else None,
        "num_samples": len(verdicts),
        "num_judged": len(judged),
        "num_failures": len(verdicts) - len(judged),
        "verdicts": [verdict.to_dict() for verdict in verdicts],
    }


class JudgeFailureError(UserError):
    """Too many verdicts of a run failed (server errors, outage, unparsable replies) for its scores to be kept.

    Nothing is cached for the failed samples: once the judge works again, running the same command judges them.
    """


def failure_rate(result: dict) -> float:
    """The share of a `score_qa` result's samples whose verdict failed."""
    return result["num_failures"] / result["num_samples"] if result["num_samples"] else 0.0


def check_failure_rate(results: dict[str, dict], max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE) -> None:
    """
    Raise `JudgeFailureError` when any test set's share of failed verdicts exceeds `max_failure_rate`.

    `results` maps a test set's name to its `score_qa` result (as `trainers.evaluation.score_predictions` records
    it). The message lists every test set, so that what could be scored is reported too.
    """
    if not 0 <= max_failure_rate <= 1:
        raise UserError(f"max_judge_failure_rate must be a fraction in [0, 1], got {max_failure_rate}")
    over = {name: result for name, result in results.items() if failure_rate(result) > max_failure_rate}
    if not over:
        return
    lines = []
    for name, result in results.items():
        accuracy = "no verdict" if result.get("accuracy") is None else f"accuracy {result['accuracy']:.4f}"
        errors = sorted({v.get("error") or "" for v in result.get("verdicts") or [] if v.get("failed")})
        example = f"; e.g. {errors[0][:160]}" if errors else ""
        lines.append(
            f"  {name}: {result['num_failures']} of {result['num_samples']} verdicts failed "
            f"({failure_rate(result):.0%}), {accuracy} over the rest{example}"
        )
    judge = next(iter(over.values())).get("judge", "the judge")
    raise JudgeFailureError(
        f"judge {judge} failed on more than {max_failure_rate:.0%} of a test set's samples, so its scores are not "
        "recorded:\n" + "\n".join(lines) + "\nFix the judge (server, model, key) and run the same command again: "
        "failed verdicts are not cached, successful ones are (set max_judge_failure_rate to accept more failures)."
    )


def judge_failures(result: dict) -> dict[str, dict]:
    """The QA test sets of an evaluation result (`evaluate_model`, or its JSON file) with failed verdicts:
    `{dataset: {"judge", "failed", "samples"}}`, empty when every verdict was given."""
    return {
        dataset: {"judge": detail.get("judge"), "failed": detail["num_failures"], "samples": detail["num_samples"]}
        for dataset, detail in result.get("datasets", {}).items()
        if detail.get("num_failures")
    }


def format_judge_failures(failures: dict[str, dict]) -> str:
    """One line a person reads: which test sets lost how many verdicts (or that none was lost)."""
    if not failures:
        return "judge failures: none (every QA sample got a verdict)"
    parts = [f"{dataset} {entry['failed']}/{entry['samples']}" for dataset, entry in failures.items()]
    return "judge failures (left out of the accuracy): " + ", ".join(parts)
