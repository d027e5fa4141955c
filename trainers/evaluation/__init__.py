"""
Measuring a model: greedy generation and scoring of a test set (`generation.evaluate_model`), CIDEr-D (`cider`), QA
judges (`judges`), the two as the `evaluate` metric modules that the scoring goes through (`cider_d`, `qa_judge`;
`evaluate.load(trainers.evaluation.cider_d.__file__)`), and the continual-learning metrics of a score matrix,
Relative Gain and the rest (`metrics`), and what a run costs: peak memory and per-token latency (`cost`).

The modules are imported one by one (`from trainers.evaluation.metrics import summarize`): `metrics` needs no torch,
so that `mera metrics` stays light.
"""
