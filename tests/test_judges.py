"""QA judges: the offline `match` judge, and the `gpt` judge against a local OpenAI-compatible server.

The OpenAI API cannot be reached from the test machines, so `FakeOpenAIServer` stands in for it: a real HTTP server
on 127.0.0.1 in a thread, spoken to by the real `openai` client over a real socket. It is the only mock here.
"""

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from trainers.evaluation.generation import score_predictions
from trainers.evaluation.judges import (
    GPTJudge,
    JudgeFailureError,
    MatchJudge,
    VerdictCache,
    get_judge,
    normalize_answer,
    parse_judge_reply,
    score_qa,
)


class FakeOpenAIServer:
    """Answers `POST /v1/chat/completions` like the OpenAI API, with a verdict chosen from the prompt:

    - "yes" (score 5) when the predicted answer equals the correct answer, "no" (score 1) otherwise;
    - a reply that is not a dictionary when the prediction contains "MALFORMED";
    - for a prediction containing "FLAKY", a malformed reply the first time and a verdict afterwards;
    - an HTTP 500 error when the prediction contains "CRASH";
    - status 200 with an HTML page as its body (a proxy's error page) when the prediction contains "HTML";
    - an HTTP 503 error for every request while `outage` is set (the judge's server is down).
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.outage = False
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append({"path": self.path, "body": body})
                    content = server.reply_for(body["messages"][-1]["content"])
                if server.outage:
                    self.send_error(503, "service unavailable")
                    return
                if content is None:
                    self.send_error(500, "internal server error")
                    return
                if content == "HTML":
                    page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                payload = json.dumps(
                    {
                        "id": f"chatcmpl-{len(server.requests)}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def reply_for(self, prompt: str) -> str:
        fields = dict(line.split(": ", 1) for line in prompt.splitlines() if ": " in line)
        answer, prediction = fields["Correct Answer"], fields["Predicted Answer"]
        if "CRASH" in prediction:
            return None
        if "HTML" in prediction:
            return "HTML"
        if "MALFORMED" in prediction:
            return "I would say it is probably right."
        if "FLAKY" in prediction and sum(prompt == r["body"]["messages"][-1]["content"] for r in self.requests) == 1:
            return "{'pred': 'maybe'"
        if answer.lower() in prediction.lower():
            return "{'pred': 'yes', 'score': 5}"
        return "Sure! {'pred': 'no', 'score': 1}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    pytest.importorskip("openai", reason="the gpt judge needs the `openai` package (eval/test extras)")
    with FakeOpenAIServer() as fake:
        yield fake


def make_judge(server, cache_file, **kwargs):
    return GPTJudge(
        model="judge-model",
        base_url=server.base_url,
        api_key="not-a-real-key",
        cache_file=cache_file,
        concurrency=4,
        retries=2,
        client_max_retries=0,
        progress=False,
        **kwargs,
    )


QUESTIONS = ["What animal is this?", "How many cars?", "What colour is the sky?", "What is he holding?"]
ANSWERS = ["dog", "three", "blue", "umbrella"]
PREDICTIONS = ["dog", "two", "the sky is blue", "a FLAKY umbrella"]


def test_gpt_judge_gives_verdicts_and_records_the_judge(server, tmp_path):
    judge = make_judge(server, tmp_path / "cache.jsonl")
    result = score_qa(judge, QUESTIONS, ANSWERS, PREDICTIONS)

    assert [v["correct"] for v in result["verdicts"]] == [True, False, True, True]
    assert [v["score"] for v in result["verdicts"]] == [5.0, 1.0, 5.0, 5.0]
    assert result["accuracy"] == 0.75 and result["mean_score"] == 4.0
    assert result["num_failures"] == 0 and result["num_judged"] == 4
    assert result["judge"] == "gpt:judge-model"
    assert all(v["judge"] == "gpt:judge-model" for v in result["verdicts"])
    # The FLAKY sample was malformed once, then retried: 4 samples + 1 retry.
    assert len(server.requests) == 5
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "judge-model" and request["body"]["temperature"] == 0.0
    assert request["body"]["messages"][0]["role"] == "system"
    assert "meaningful match" in request["body"]["messages"][0]["content"]


def test_malformed_reply_is_retried_then_counted_as_failure_not_as_no(server, tmp_path):
    judge = make_judge(server, tmp_path / "cache.jsonl")
    result = score_qa(judge, ["What animal?", "What animal?"], ["dog", "dog"], ["MALFORMED dog", "cat"])

    failed, wrong = result["verdicts"]
    assert failed["failed"] and failed["correct"] is None and "after 3 attempts" in failed["error"]
    assert failed["reply"] == "I would say it is probably right."
    assert not wrong["failed"] and wrong["correct"] is False
    # 1 + 2 retries for the malformed sample, 1 for the other.
    assert len(server.requests) == 4
    assert result["num_failures"] == 1 and result["num_judged"] == 1
    assert result["accuracy"] == 0.0  # over judged samples only: the failure is not a "no"


def test_verdict_cache_makes_a_second_run_free(server, tmp_path):
    cache_file = tmp_path / "cache.jsonl"
    first = score_qa(make_judge(server, cache_file), QUESTIONS, ANSWERS, PREDICTIONS)
    requests_after_first_run = len(server.requests)

    second = score_qa(make_judge(server, cache_file), QUESTIONS, ANSWERS, PREDICTIONS)
    assert len(server.requests) == requests_after_first_run
    assert all(v["cached"] for v in second["verdicts"])
    assert [v["correct"] for v in second["verdicts"]] == [v["correct"] for v in first["verdicts"]]
    assert second["accuracy"] == first["accuracy"]

    # The key includes the model: another judge model asks the server again.
    other_model = GPTJudge(
        model="another-model", base_url=server.base_url, api_key="x", cache_file=cache_file, progress=False
    )
    score_qa(other_model, QUESTIONS[:1], ANSWERS[:1], PREDICTIONS[:1])
    assert len(server.requests) == requests_after_first_run + 1


def test_server_error_counts_as_failure(server, tmp_path):
    result = score_qa(make_judge(server, tmp_path / "cache.jsonl"), ["Q?", "Q?"], ["dog", "dog"], ["CRASH", "dog"])
    crashed, judged = result["verdicts"]
    assert crashed["failed"] and crashed["correct"] is None and crashed["error"].startswith("request failed")
    assert judged["correct"] is True
    assert result["num_failures"] == 1 and result["accuracy"] == 1.0


def test_failures_are_not_cached(server, tmp_path):
    cache_file = tmp_path / "cache.jsonl"
    score_qa(make_judge(server, cache_file), ["Q?"], ["dog"], ["MALFORMED"])
    score_qa(make_judge(server, cache_file), ["Q?"], ["dog"], ["MALFORMED"])
    assert len(server.requests) == 6  # both runs asked 3 times


def test_parse_judge_reply():
    assert parse_judge_reply("{'pred': 'yes', 'score': 4}") == (True, 4.0)
    assert parse_judge_reply('Here: {"pred": "No", "score": 0}.') == (False, 0.0)
    assert parse_judge_reply("{'pred': 'yes', 'score': 4.8}") == (True, 4.8)
    for reply in ["yes", "{'pred': 'maybe', 'score': 3}", "{'pred': 'yes'}", "{'pred': 'yes', 'score': 9}", "", None]:
        with pytest.raises(ValueError):
            parse_judge_reply(reply)


def test_match_judge_normalises_numbers_articles_and_punctuation():
    judge = MatchJudge()
    cases = [
        ("two", "2", True),
        ("2", "Two.", True),
        ("the red car", "Red car!", True),
        ("dog", "It is a dog.", True),  # contained as whole words
        ("dog", "hotdog", False),
        ("cat", "dog", False),
        ("3.5", "3.5 meters", True),
        ("yes", "No.", False),
    ]
    for answer, prediction, expected in cases:
        verdict = judge.judge("Q?", answer, prediction)
        assert verdict.correct is expected, (answer, prediction)
        assert verdict.judge == "match" and not verdict.failed
    assert judge.judge("Q?", ["truck", "lorry"], "a lorry").correct is True  # several acceptable answers
    assert normalize_answer("The Two dogs, 1,000 times.") == ["2", "dogs", "1000", "times"]

    result = score_qa(judge, ["Q?"] * 4, ["two", "blue", "dog", "cat"], ["2", "blue", "cat", "cat"])
    assert result["accuracy"] == 0.75 and result["judge"] == "match" and result["mean_score"] is None


def test_get_judge_defaults_to_gpt_only_with_an_api_key(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert isinstance(get_judge(), MatchJudge)
    assert isinstance(get_judge("auto"), MatchJudge)
    pytest.importorskip("openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    judge = get_judge(cache_file=tmp_path / "cache.jsonl")
    assert isinstance(judge, GPTJudge) and judge.description == "gpt:gpt-4o-mini"
    with pytest.raises(ValueError, match="Unknown judge 'bleu'; choose one of \\['gpt', 'match'\\]"):
        get_judge("bleu")


def test_judges_module_imports_openai_lazily():
    code = "import sys, trainers.evaluation.judges as j; j.get_judge('match'); print('openai' in sys.modules)"
    repo_root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root)
    output = run.stdout
    assert output.strip() == "False"


# --- failures are counted, reported and never cached (issue 17) ------------------------------------------------


def qa_samples(predictions, answer="dog", dataset="toy-qa"):
    return [
        {"id": str(i), "modality": "image", "media": "x.png", "prompt": f"Q{i}: what animal?", "answer": answer,
         "task": "qa", "dataset": dataset}
        for i in range(len(predictions))
    ]  # fmt: skip


def test_html_page_with_status_200_is_a_counted_failure(server, tmp_path):
    # The old code let the client's decoding error escape and stop the whole evaluation.
    result = score_qa(make_judge(server, tmp_path / "cache.jsonl"), ["Q?", "Q?"], ["dog", "dog"], ["HTML", "dog"])
    page, judged = result["verdicts"]
    assert page["failed"] and page["correct"] is None
    assert judged["correct"] is True
    assert result["num_failures"] == 1 and result["num_judged"] == 1 and result["accuracy"] == 1.0


def test_failure_rate_above_the_threshold_fails_after_scoring_everything(server, tmp_path):
    # 28 verdicts: 7 server errors (25%), 7 malformed replies (25%), 14 good ones of which 7 right.
    predictions = ["CRASH"] * 7 + ["MALFORMED"] * 7 + ["dog"] * 7 + ["cat"] * 7
    samples = qa_samples(predictions)
    judge = make_judge(server, tmp_path / "cache.jsonl")
    with pytest.raises(JudgeFailureError) as raised:
        score_predictions(samples, predictions, judge)  # default threshold: 5%
    message = str(raised.value)
    assert "toy-qa: 14 of 28 verdicts failed (50%), accuracy 0.5000 over the rest" in message
    assert "not cached" in message
    assert len(server.requests) == 7 + 7 * 3 + 14, "every sample was judged before the run failed"

    # Below the threshold the score is kept and the failures are in the result, not silently dropped.
    kept = score_predictions(samples, predictions, judge, max_judge_failure_rate=0.6)
    detail = kept["datasets"]["toy-qa"]
    assert detail["num_failures"] == 14 and detail["num_judged"] == 14 and kept["scores"]["toy-qa"] == 0.5


def test_total_outage_fails_without_caching_and_a_rerun_judges_again(server, tmp_path):
    cache_file = tmp_path / "cache.jsonl"
    predictions = ["dog", "cat", "a dog"]
    server.outage = True
    with pytest.raises(JudgeFailureError, match="3 of 3 verdicts failed"):
        score_predictions(qa_samples(predictions), predictions, make_judge(server, cache_file))
    assert len(server.requests) == 3
    assert not cache_file.exists() or cache_file.read_text() == "", "no failed verdict is cached"

    server.outage = False
    result = score_predictions(qa_samples(predictions), predictions, make_judge(server, cache_file))
    assert len(server.requests) == 6, "the rerun asked the server again"
    assert result["scores"]["toy-qa"] == pytest.approx(2 / 3)
    assert result["datasets"]["toy-qa"]["num_failures"] == 0


def test_cache_key_covers_server_and_temperature(tmp_path):
    pytest.importorskip("openai")
    cache_file = tmp_path / "cache.jsonl"
    with FakeOpenAIServer() as first, FakeOpenAIServer() as second:
        score_qa(make_judge(first, cache_file), QUESTIONS, ANSWERS, PREDICTIONS)
        asked = len(first.requests)
        score_qa(make_judge(first, cache_file), QUESTIONS, ANSWERS, PREDICTIONS)
        assert len(first.requests) == asked, "same judge, same server: every verdict from the cache"

        score_qa(make_judge(second, cache_file), QUESTIONS, ANSWERS, PREDICTIONS)
        assert len(second.requests) >= len(QUESTIONS), "another server is asked, not given the first's verdicts"

        score_qa(make_judge(first, cache_file, temperature=0.7), QUESTIONS, ANSWERS, PREDICTIONS)
        assert len(first.requests) >= asked + len(QUESTIONS), "another temperature is asked again"
        assert first.requests[-1]["body"]["temperature"] == 0.7

    keys = {
        VerdictCache.key("m", "http://a/v1", 0.0, "s", "u", "q", "a", "p"),
        VerdictCache.key("m", "http://a/v1", 0.0, "s", "u", "q", "b", "p"),
        VerdictCache.key("m", "http://a/v1", 0.0, "s", "u", "q", "a", "p2"),
        VerdictCache.key("m", "http://a/v1", 0.0, "s2", "u", "q", "a", "p"),
    }
    assert len(keys) == 4, "reference, prediction and prompt each change the key"


def test_a_cache_file_holding_a_failed_entry_is_not_believed(server, tmp_path):
    # An older version could leave `None` verdicts in the cache; they must be judged again, not returned.
    cache_file = tmp_path / "cache.jsonl"
    judge = make_judge(server, cache_file)
    key = VerdictCache.key(
        "judge-model", str(judge.client.base_url), 0.0, *judge_prompts("Q?", "dog", "dog"), "Q?", "dog", "dog"
    )
    cache_file.write_text(json.dumps({"key": key, "reply": None, "correct": None, "score": None}) + "\n")
    result = score_qa(make_judge(server, cache_file), ["Q?"], ["dog"], ["dog"])
    assert result["verdicts"][0]["correct"] is True and not result["verdicts"][0]["cached"]
    assert len(server.requests) == 1


def judge_prompts(question, answer, prediction):
    from trainers.evaluation.judges import JUDGE_SYSTEM_PROMPT, JUDGE_USER_PROMPT

    return JUDGE_SYSTEM_PROMPT, JUDGE_USER_PROMPT.format(question=question, answer=answer, prediction=prediction)


def test_evaluation_file_is_not_written_when_the_judge_is_down(server, tmp_path):
    # The continual run reuses eval/stage-i.json as the stage's scores: written during an outage, it kept a run
    # crashing on `None` scores and never asked the judge again.
    from conftest import build_tiny_model, tiny_processor, toy_samples

    from trainers.evaluation.generation import evaluate_model

    model = build_tiny_model(("image",))
    samples = [s for s in toy_samples(tmp_path / "media", "image", count=4) if s["task"] == "qa"]
    output = tmp_path / "eval" / "stage-1.json"
    server.outage = True
    with pytest.raises(JudgeFailureError):
        evaluate_model(
            model, tiny_processor(model), samples, judge=make_judge(server, tmp_path / "c.jsonl"),
            max_new_tokens=3, output_file=output, progress=False,
        )  # fmt: skip
    assert not output.exists()
    server.outage = False
    result = evaluate_model(
        model, tiny_processor(model), samples, judge=make_judge(server, tmp_path / "c.jsonl"),
        max_new_tokens=3, output_file=output, progress=False,
    )  # fmt: skip
    assert output.exists() and result["datasets"][samples[0]["dataset"]]["num_failures"] == 0


def test_judge_model_url_and_prompt_come_from_the_run_config(server, tmp_path, monkeypatch):
    from trainers.settings import ContinualConfig

    monkeypatch.setenv("OPENAI_API_KEY", "not-a-real-key")
    prompt = "Grade it.\nQuestion: {question}\nCorrect Answer: {answer}\nPredicted Answer: {prediction}"
    settings = {"model": "local-judge", "base_url": server.base_url, "system_prompt": "You grade answers.",
                "user_prompt": prompt, "cache_file": str(tmp_path / "verdicts.jsonl"), "progress": False}  # fmt: skip
    config = ContinualConfig(judge="gpt", judge_args=settings)
    judge = get_judge(config.judge, **config.judge_args)
    result = score_qa(judge, QUESTIONS[:2], ANSWERS[:2], PREDICTIONS[:2])
    assert result["accuracy"] == 0.5 and result["judge"] == "gpt:local-judge"
    body = server.requests[0]["body"]
    assert body["model"] == "local-judge" and body["messages"][0]["content"] == "You grade answers."
    assert body["messages"][1]["content"].startswith("Grade it.\nQuestion: ")
    for wrong, message in (
        ({"modle": "x"}, r"judge_args \['modle'\] are not settings of the 'gpt' judge"),
        ({"api_key": "sk-1"}, "does not belong in a config file"),
        ({"user_prompt": "Is {prediction} right?"}, r"lacks \['answer'\]"),
        ({"user_prompt": "{answer} {prediction} {reference}"}, r"unknown \['reference'\]"),
    ):
        with pytest.raises(ValueError, match=message):
            ContinualConfig(judge="gpt", judge_args=wrong)
