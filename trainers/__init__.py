"""How a stage is learnt and measured: trainers, continual-learning methods, merging and evaluation metrics."""
