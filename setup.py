from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="mera-mcl",
    version="0.1.0",
    description=(
        "MERA (Merge then Realign): modality-incremental continual learning for multimodal LLMs, Hugging Face-native."
    ),
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["modeling_mera", "trainers", "trainers.*", "recipes"]),
    package_data={"recipes": ["configs/*.yaml"]},
    # The model card template of pushed stages; trainers.hub finds it here in a wheel install (share/mera-mcl/).
    data_files=[("share/mera-mcl", ["model_card.md"])],
    include_package_data=True,
    # Floors: what the other requirements need at least (tests/test_dependencies.py checks them against the
    # installed libraries' metadata). Upper bounds where the code leans on a library's internals.
    install_requires=[
        "torch>=2.6",  # transformers 5.24 needs 2.6; CI installs the 2.13.0 CPU wheel first
        "transformers>=5.24,<6",
        # trainers/merge.py relies on LoraLayer.scaling, set_scale's meaning and get_delta_weight (PEFT 0.21).
        "peft>=0.21,<0.22",
        # trainers/sft.py overrides SFTTrainer.compute_loss/create_optimizer and relies on skip_prepare_dataset.
        "trl>=1.16,<1.17",
        "accelerate>=1.15",
        "datasets>=4.7",  # trl 1.16's floor
        "huggingface_hub>=1.31,<3",  # transformers 5.24's range
        "jinja2",  # huggingface_hub's ModelCard.from_template renders the stage cards with it
        "evaluate>=0.4.5",  # CIDEr-D and the QA judge are evaluate metric modules
        "safetensors>=0.8",
        "tokenizers>=0.23.1",  # the demo trains its own word-level tokenizer
        "numpy>=1.26",
        "pillow>=9",  # images: the processor, the data readers and the demo's renderer
        "soxr>=0.5",  # audio resampling, as transformers' audio_utils does it
        "pyyaml>=6.0.1",
        "tqdm>=4.66.3",
        "matplotlib",
    ],
    extras_require={
        # pycocoevalcap is only the tests' reference for CIDEr-D; packaging reads requirement specifiers there.
        "test": ["pytest>=8", "ruff>=0.6", "openai>=1.40", "pycocoevalcap>=1.2", "av>=12", "packaging"],
        "eval": ["openai>=1.40"],  # the `gpt` judge (any OpenAI-compatible server)
        "quant": ["bitsandbytes>=0.45"],
        "deepspeed": ["deepspeed>=0.18.6"],  # ZeRO-3 launches (recipes/accelerate/zero*.yaml); trl 1.16's floor
        "video": ["av>=12"],  # decoding video files (MSVD clips) into frames
    },
    entry_points={"console_scripts": ["mera=recipes.cli:main"]},
)
