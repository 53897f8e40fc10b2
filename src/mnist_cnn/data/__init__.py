"""The data layer: MNIST-style datasets, from the bytes on disk to tensors.

- `idx.py`: the IDX file format (MNIST's), read with bounded memory, gzip or not.
- `sources.py`: the dataset catalogue (MNIST, Fashion-MNIST, ...), finding files and downloading them.
- `dataset.py`: a dataset loaded into tensors, and its train/validation/test splits.

May import: `mnist_cnn.errors`, `mnist_cnn.files` and this package; nothing above it.
"""
