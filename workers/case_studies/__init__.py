"""Case studies on real LMs (issue #16): task prompts with a known answer and where its information lives.

``ioi.py`` generates indirect-object-identification prompts in natural English (torch-free; a tokenizer is
passed in where tokens are needed); ``positions.py`` runs the IO-position check of the engine's ground-truth
evaluation (``workers.engine.evaluation``) over such prompts.
"""
