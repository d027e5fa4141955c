"""The collator that feeds `MeraForCausalLM`: reads a batch's media and tokenises its conversations."""

from .conversations import encode_samples


class MeraDataCollator:
    """
    Read a batch's media, tokenise whole conversations with `MeraProcessor` (only the assistant turns in `labels`,
    see `trainers.data.conversations`), pad, and batch each modality's inputs. Batches may mix modalities and
    text-only samples.
    """

    def __init__(self, processor, max_length: int | None = None, padding_side: str = "right"):
        self.processor = processor
        self.max_length = max_length
        self.padding_side = padding_side

    def __call__(self, samples: list[dict]) -> dict:
        return dict(encode_samples(self.processor, samples, self.padding_side, max_length=self.max_length))
