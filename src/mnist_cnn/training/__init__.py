"""Training networks: the loop with its checkpoints and resumption (`loop.py`), data
augmentation (`augment.py`) and ensembles of members trained one after another.

May import every layer below it (`errors`, `files`, `data`, `images`, `models`, `runtime`,
`inference`: training evaluates with inference's code) and this package.
"""
