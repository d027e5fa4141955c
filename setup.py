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
    install_requires=[
        # 2.13.0 is the CPU wheel CI installs first; keep the floor loose enough to admit it.
        "torch>=2.4",
        "transformers>=5.24,<6",
        "peft>=0.21",
        "trl>=1.16",
        "accelerate>=1.15",
        "datasets>=4.0",
        "huggingface_hub>=1.0",
        "jinja2",  # huggingface_hub's ModelCard.from_template renders the stage cards with it
        "evaluate>=0.4",
        "safetensors",
        "numpy",
        "pyyaml",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest>=8", "ruff>=0.6", "openai>=1.40", "pycocoevalcap>=1.2", "av>=12"],
        "eval": ["openai>=1.40", "pycocoevalcap>=1.2"],
        "quant": ["bitsandbytes>=0.45"],
        "video": ["av>=12"],  # decoding video files (MSVD clips) into frames
    },
    entry_points={"console_scripts": ["mera=recipes.cli:main"]},
)
