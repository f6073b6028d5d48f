"""Pretraining's parts: its options (args), the packed data it reads (data), how a run is set
up (setup), what it carries from step to step and across a resume (progress) and its
checkpoints (checkpoint).

`trainer/pretrain.py` is the program (a script path, for `accelerate launch`) and its loop.
"""
