"""Pretraining's parts: its options, the packed data it reads and its checkpoints.

`trainer/pretrain.py` is the program (a script path, for `accelerate launch`); this
package holds what it is made of.
"""
