"""Pictures of digits: reading image files (untrusted input), preprocessing them the way MNIST was
made, and drawing synthetic digits, pens and notebook pages for tests, benchmarks and training.

- `preprocess.py`: decoding an image file and turning its ink into a centred 28x28 MNIST field.
- `synthetic.py`, `pen.py`, `notebook.py`: generated digits, pen strokes and photographed pages.

May import: `mnist_cnn.errors`, `mnist_cnn.files`, `mnist_cnn.opencv`, `mnist_cnn.data` and this
package. It knows nothing of networks.
"""
