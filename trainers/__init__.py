"""
How a continual run is learnt and measured, grouped by role: the settings (`settings`), the one stage loop
(`stage`, `plugins`, `checkpoint`), a whole run (`continual`), TRL trainers and merges (`sft`, `merge`), the methods
(`methods/`), data (`data/`), evaluation (`evaluation/`), the Hub (`hub/`) and the offline benchmark (`demo/`).
See docs/architecture.md.
"""
