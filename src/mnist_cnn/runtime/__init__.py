"""Where the code runs: `device.py` (the device and precision, CPU threads that follow the
machine's load, the allocator, and the environment report) and `distributed.py` (torchrun's
process group, and the helpers that read on rank 0 and share the answer).

May import the layers below (`errors`, `files`, `data`, `images`, `models`) and this package.
"""
