"""Where the code runs: `device.py` (the device and precision, `setup`), `threads.py` (CPU threads
that follow the machine's load, the cores allowed, the allocator), `environment.py` (the report
of CPU, libraries and GPUs that `mnist-cnn env` and every benchmark print) and `distributed.py`
(torchrun's process group, and the helpers that read on rank 0 and share the answer).

May import the layers below (`errors`, `files`, `data`, `images`, `models`) and this package.
"""
