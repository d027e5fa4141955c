"""CIDEr-D caption scoring that runs offline, without Java and without pycocoevalcap.

The paper scores captions with pycocoevalcap's `Cider` scorer (CIDEr-D: tf-idf weighted n-gram cosine similarity
with clipped counts and a Gaussian length penalty). This module re-implements that scorer in plain Python so that
the library works when the `eval` extra is not installed; `tests/test_cider.py` checks it against pycocoevalcap to
1e-6. Document frequencies come from the references of the evaluated set itself, as in the reference
implementation, so a score depends on the whole set being scored, not only on one caption.

pycocoevalcap tokenises with Stanford's PTB tokenizer, which needs Java. `tokenize_caption` approximates it: lower
case, contractions split off ("dog's" -> "dog 's", "don't" -> "do n't"), punctuation tokens dropped.

Example:

```python
>>> from trainers.evaluation.cider import compute_cider
>>> score, per_caption = compute_cider(
...     predictions=["a dog runs on the grass", "a cat sleeps"],
...     references=[["a dog is running on the grass", "a brown dog runs"], ["a cat is sleeping on a sofa"]],
... )
```
"""

import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["tokenize_caption", "compute_cider", "score_captions"]

# Tokens that pycocoevalcap's PTB tokenizer wrapper removes after tokenising (brackets come out of Java as -LRB-
# and friends, quotes as `` and ''), plus the plain forms our tokenizer produces for the same characters.
PUNCTUATION_TOKENS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
    + ['"', "(", ")", "[", "]", "{", "}"]
)

_CONTRACTION_NOT = re.compile(r"(\w)(n't)\b")
_CONTRACTION_CLITIC = re.compile(r"(\w)('(?:s|re|ve|ll|d|m))\b")
_TOKEN = re.compile(
    r"n't|'(?:s|re|ve|ll|d|m)\b"  # clitics split off above
    r"|\d+(?:[.,]\d+)+"  # numbers with a decimal or thousands separator: 3.5, 1,000
    r"|\w+(?:[-']\w+)*"  # words, hyphenated words (black-and-white) and o'clock
    r"|\.\.\.|--|[^\w\s]"  # every other symbol is its own token
)


def tokenize_caption(text: str) -> str:
    """Lower-case `text`, split it into PTB-like tokens, drop punctuation; returns the tokens joined by spaces."""
    text = text.lower().replace("\n", " ")
    text = _CONTRACTION_NOT.sub(r"\1 \2", text)
    text = _CONTRACTION_CLITIC.sub(r"\1 \2", text)
    return " ".join(token for token in _TOKEN.findall(text) if token not in PUNCTUATION_TOKENS)


def _ngram_counts(caption: str, n: int) -> Counter:
    words = caption.split()
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _tfidf_vector(counts: Counter, document_frequency: Counter, log_num_images: float, n: int):
    """Per-order tf-idf weights, their norms, and the caption length as the reference implementation counts it."""
    vector = [{} for _ in range(n)]
    squared_norm = [0.0] * n
    length = 0
    for ngram, term_frequency in counts.items():
        order = len(ngram) - 1
        # An n-gram absent from every reference gets document frequency 1 (idf = log(#images)), as in pycocoevalcap.
        weight = float(term_frequency) * (log_num_images - math.log(max(1.0, document_frequency[ngram])))
        vector[order][ngram] = weight
        squared_norm[order] += weight * weight
        # pycocoevalcap measures length in bigrams (its `n == 1` is the bigram index); kept so scores match it.
        if order == 1:
            length += term_frequency
    return vector, [math.sqrt(value) for value in squared_norm], length


def _similarity(candidate, reference, n: int, sigma: float) -> float:
    """Sum over n-gram orders of the clipped cosine similarity times the Gaussian length penalty."""
    (cand_vec, cand_norm, cand_len), (ref_vec, ref_norm, ref_len) = candidate, reference
    penalty = math.exp(-(float(cand_len - ref_len) ** 2) / (2 * sigma**2))
    total = 0.0
    for order in range(n):
        value = 0.0
        for ngram, weight in cand_vec[order].items():
            ref_weight = ref_vec[order].get(ngram, 0.0)
            value += min(weight, ref_weight) * ref_weight
        if cand_norm[order] != 0 and ref_norm[order] != 0:
            value /= cand_norm[order] * ref_norm[order]
        total += value * penalty
    return total


def compute_cider(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    n: int = 4,
    sigma: float = 6.0,
    tokenize: bool = True,
) -> tuple[float, list[float]]:
    """CIDEr-D of each predicted caption against its references, and the corpus score (their mean).

    Args:
        predictions: one generated caption per sample.
        references: for each sample, one or more reference captions.
        n: highest n-gram order (pycocoevalcap: 4).
        sigma: standard deviation of the Gaussian length penalty (pycocoevalcap: 6.0).
        tokenize: run `tokenize_caption` on every caption first. Pass `False` when the captions are already
            tokenised (space-separated tokens), e.g. to compare with pycocoevalcap on identical tokens.

    Returns:
        `(corpus_score, per_sample_scores)` on pycocoevalcap's scale, where papers report 100x the value
        (`score_captions` does that conversion).
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"compute_cider got {len(predictions)} predictions but {len(references)} reference lists; "
            "pass one list of references per prediction."
        )
    if not predictions:
        raise ValueError("compute_cider got no captions to score.")
    for index, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{index}] must be a non-empty list of reference captions, got {refs!r}.")
    prepare = tokenize_caption if tokenize else (lambda caption: caption)
    candidate_counts = [_ngram_counts(prepare(caption), n) for caption in predictions]
    reference_counts = [[_ngram_counts(prepare(ref), n) for ref in refs] for refs in references]

    # Document frequency: in how many samples' reference sets an n-gram occurs.
    document_frequency = Counter()
    for refs in reference_counts:
        document_frequency.update({ngram for counts in refs for ngram in counts})
    log_num_images = math.log(float(len(reference_counts)))

    scores = []
    for cand, refs in zip(candidate_counts, reference_counts):
        cand_vector = _tfidf_vector(cand, document_frequency, log_num_images, n)
        total = sum(
            _similarity(cand_vector, _tfidf_vector(ref, document_frequency, log_num_images, n), n, sigma)
            for ref in refs
        )
        # Mean over n-gram orders and over references, times 10, exactly as the reference implementation.
        scores.append(total / n / len(refs) * 10.0)
    return sum(scores) / len(scores), scores


def score_captions(
    predictions: Sequence[str], references: Sequence[Sequence[str] | str], n: int = 4, sigma: float = 6.0
) -> dict:
    """Score a caption test set the way the paper reports it: CIDEr-D x 100, plus the per-sample values.

    `references` may hold a single string per sample, which counts as a one-reference list. The `evaluate` metric
    module `cider_d.py` (what the evaluation loop uses) returns this.
    """
    references = [[refs] if isinstance(refs, str) else list(refs) for refs in references]
    corpus, per_sample = compute_cider(predictions, references, n=n, sigma=sigma)
    return {
        "metric": "cider",
        "score": 100.0 * corpus,
        "per_sample": [100.0 * value for value in per_sample],
        "num_samples": len(per_sample),
    }
