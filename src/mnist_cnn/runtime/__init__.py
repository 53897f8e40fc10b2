"""Where the code runs: the device and precision, CPU threads, torchrun's process group
(`distributed.py`) and the environment report.

May import the layers below (`errors`, `files`, `data`, `images`, `models`) and this package.
"""
