"""The collator that feeds `MeraForCausalLM`: reads a batch's media and tokenises it with `MeraProcessor`."""

from .media import read_media


def prompt_with_placeholder(config, sample: dict) -> str:
    """The sample's prompt; without an explicit placeholder, the media goes first, as in LLaVA."""
    placeholder = config.modalities[sample["modality"]]["placeholder"]
    prompt = sample["prompt"]
    return prompt if placeholder in prompt else f"{placeholder}\n{prompt}"


class MeraDataCollator:
    """
    Read a batch's media, tokenise prompts and answers with `MeraProcessor` (prompt masked out of `labels`), pad,
    and batch each modality's inputs. Batches may mix modalities.
    """

    def __init__(self, processor, max_length: int | None = None, padding_side: str = "right"):
        self.processor = processor
        self.max_length = max_length
        self.padding_side = padding_side

    def __call__(self, samples: list[dict]) -> dict:
        prompts, media, answers = [], [], []
        for sample in samples:
            modality = sample["modality"]
            if modality not in self.processor.config.modalities:
                raise ValueError(
                    f"sample {sample['id']}: modality {modality!r} is not in the model "
                    f"(it has {list(self.processor.config.modalities)})"
                )
            kind = self.processor.config.modalities[modality]["kind"]
            prompts.append(prompt_with_placeholder(self.processor.config, sample))
            media.append({modality: read_media(sample["media"], kind)})
            answers.append(sample["answer"])
        batch = self.processor(
            prompts, media=media, answers=answers, padding_side=self.padding_side, max_length=self.max_length
        )
        return dict(batch)
