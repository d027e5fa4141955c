"""Runnable entry points of mera-mcl: the `mera` command, the stage and continual recipes, their configs."""
