"""Reference benchmark: the lecture's two MNIST CNNs in TensorFlow 1 style (v1 graph mode).

Standalone on purpose: it needs only numpy and TensorFlow (never the mnist_cnn package), so it runs in
its own environment, kept apart from the project's PyTorch one:

    python3 -m venv .venv-tf && .venv-tf/bin/pip install tensorflow-cpu numpy
    .venv-tf/bin/python benchmarks/tf1_lecture.py --model simple --epochs 1
    .venv-tf/bin/python benchmarks/tf1_lecture.py --model deep --epochs 0.3 --threads 2

The networks, initialisations, optimiser and loop follow the lecture: placeholders X [None, 784],
Y [None, 10] and keep_prob; 3x3 SAME convolutions (weights N(0, 0.01)), ReLU, 2x2 SAME max-pooling;
Xavier dense layers with N(0, 1) biases; softmax cross-entropy; Adam(0.001); batches of 100 drawn from
a shuffled 55,000-image training set (the last 55,000 of the 60,000; the first 5,000 are validation).

The last line printed is machine-readable:
    RESULT model=simple epochs=1 train_seconds=... images_per_second=... test_accuracy=... process_seconds=...
train_seconds times only the training loop (the sess.run calls over all batches); process_seconds runs
from the top of this script, before TensorFlow is imported.
"""

import argparse
import gzip
import math
import os
import time

STARTED = time.perf_counter()  # process_seconds counts from here, before numpy and TensorFlow load

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's C++ info and warning chatter

import numpy as np  # noqa: E402


def import_tf_v1():
    """tensorflow.compat.v1, imported with file descriptor 2 pointed at /dev/null for the import only.

    TF_CPP_MIN_LOG_LEVEL does not reach the lines TensorFlow 2.21 logs while loading, before its C++
    logging is set up ("All log messages before absl::InitializeLog() ..." and the oneDNN notice); stderr
    is restored before anything else runs, so a failed import still shows its traceback."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow.compat.v1 as tf_v1
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    tf_v1.get_logger().setLevel("ERROR")  # and the Python-side deprecation notices of the v1 API
    return tf_v1


tf = import_tf_v1()
tf.disable_v2_behavior()  # placeholders, sessions and graph-mode optimisers, as in TensorFlow 1

BATCH_SIZE = 100
VALIDATION_SIZE = 5000  # the first 5,000 training images are held out, as the lecture's reader did
LEARNING_RATE = 0.001
# mnist-cnn's cache (`mnist-cnn data fetch` fills it), unless $MNIST_DATA_DIR or --data-dir say
DEFAULT_DATA_DIR = os.path.join(
    os.environ.get("MNIST_CNN_CACHE")
    or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mnist-cnn"),
    "mnist")
FILES = {  # each raw or gzip-compressed (name.gz)
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# ----------------------------------------------------------------------------------------------- data
def read_idx(path: str) -> np.ndarray:
    """One IDX file (raw, or path + ".gz") as a uint8 array of the shape its header states."""
    if os.path.exists(path + ".gz"):
        with gzip.open(path + ".gz", "rb") as f:
            raw = f.read()
    else:
        with open(path, "rb") as f:
            raw = f.read()
    # Header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then each
    # dimension as a big-endian 32-bit integer.
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes of data")
    return data.reshape(dims)


def load_mnist(data_dir: str):
    """(train_x, train_y, test_x, test_y): images flattened to 784 floats in [0, 1], labels one-hot."""
    arrays = {key: read_idx(os.path.join(data_dir, name)) for key, name in FILES.items()}

    def images(a):
        return (a.reshape(len(a), 784).astype(np.float32) / 255.0)

    def one_hot(labels):
        return np.eye(10, dtype=np.float32)[labels]

    train_x = images(arrays["train_images"])[VALIDATION_SIZE:]
    train_y = one_hot(arrays["train_labels"])[VALIDATION_SIZE:]
    return train_x, train_y, images(arrays["test_images"]), one_hot(arrays["test_labels"])


# ------------------------------------------------------------------------------------------- networks
def conv_block(inputs, c_in: int, c_out: int):
    """3x3 convolution (stride 1, SAME, no bias) -> ReLU -> 2x2 max-pool (stride 2, SAME)."""
    weights = tf.Variable(tf.random_normal([3, 3, c_in, c_out], stddev=0.01))
    out = tf.nn.relu(tf.nn.conv2d(inputs, weights, strides=[1, 1, 1, 1], padding="SAME"))
    return tf.nn.max_pool(out, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="SAME")


def dense(inputs, name: str, n_in: int, n_out: int):
    """Fully connected layer: Xavier (Glorot uniform) weights, N(0, 1) bias, as in the lecture."""
    weights = tf.get_variable(name, shape=[n_in, n_out], initializer=tf.glorot_uniform_initializer())
    bias = tf.Variable(tf.random_normal([n_out]))
    return tf.matmul(inputs, weights) + bias


def build_simple(X, keep_prob):
    """Two conv blocks (32, 64 channels) and one dense layer: 28 -> 14 -> 7, 7*7*64 = 3136 features."""
    del keep_prob  # the simple network has no dropout; the placeholder is fed anyway, as for deep
    images = tf.reshape(X, [-1, 28, 28, 1])
    out = conv_block(conv_block(images, 1, 32), 32, 64)
    return dense(tf.reshape(out, [-1, 7 * 7 * 64]), "W3", 7 * 7 * 64, 10)


def build_deep(X, keep_prob):
    """Three conv blocks (32, 64, 128), each followed by dropout; 28 -> 14 -> 7 -> 4 (SAME pads 7 to 8);
    then 2048 -> 625 (ReLU, dropout) -> 10."""
    out = tf.reshape(X, [-1, 28, 28, 1])
    for c_in, c_out in ((1, 32), (32, 64), (64, 128)):
        # tf.nn.dropout takes the drop rate now; rate = 1 - keep_prob is the lecture's keep_prob
        out = tf.nn.dropout(conv_block(out, c_in, c_out), rate=1 - keep_prob)
    out = tf.reshape(out, [-1, 4 * 4 * 128])
    out = tf.nn.dropout(tf.nn.relu(dense(out, "W4", 4 * 4 * 128, 625)), rate=1 - keep_prob)
    return dense(out, "W5", 625, 10)


MODELS = {"simple": (build_simple, 1.0), "deep": (build_deep, 0.7)}  # builder, training keep_prob


# ------------------------------------------------------------------------------------------------ run
def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="simple")
    parser.add_argument("--epochs", type=float, default=15,
                        help="epochs to train; a fraction such as 0.3 runs that share of one epoch's batches")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra- and inter-op thread pools (default: TensorFlow's own choice)")
    parser.add_argument("--seed", type=int, default=777,
                        help="graph-level TensorFlow seed, also seeds the shuffling (default: %(default)s)")
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA_DIR", DEFAULT_DATA_DIR),
                        help=f"folder with the four MNIST IDX files, raw or .gz (default: $MNIST_DATA_DIR, "
                             f"{DEFAULT_DATA_DIR})")
    args = parser.parse_args()
    if args.epochs <= 0:
        parser.error("--epochs must be positive")
    return args


def main() -> None:
    args = parse_args()
    train_x, train_y, test_x, test_y = load_mnist(args.data_dir)

    tf.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    build, train_keep_prob = MODELS[args.model]

    X = tf.placeholder(tf.float32, [None, 784])
    Y = tf.placeholder(tf.float32, [None, 10])
    keep_prob = tf.placeholder(tf.float32)
    logits = build(X, keep_prob)
    cost = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits_v2(logits=logits, labels=Y))
    optimizer = tf.train.AdamOptimizer(learning_rate=LEARNING_RATE).minimize(cost)
    correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1), tf.argmax(Y, 1)), tf.float32))

    config = tf.ConfigProto()
    if args.threads:
        config.intra_op_parallelism_threads = args.threads
        config.inter_op_parallelism_threads = args.threads

    batches_per_epoch = len(train_x) // BATCH_SIZE  # 550, the lecture's total_batch
    total_steps = max(1, round(args.epochs * batches_per_epoch))
    train_seconds = 0.0

    with tf.Session(config=config) as sess:
        sess.run(tf.global_variables_initializer())
        print("Learning started. It takes sometime.", flush=True)
        done, epoch = 0, 0
        while done < total_steps:
            steps = min(batches_per_epoch, total_steps - done)  # a fractional last epoch runs fewer
            order = rng.permutation(len(train_x))  # reshuffled every epoch, like the lecture's next_batch
            avg_cost = 0.0
            tick = time.perf_counter()
            for i in range(steps):
                idx = order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]
                feed = {X: train_x[idx], Y: train_y[idx], keep_prob: train_keep_prob}
                c, _ = sess.run([cost, optimizer], feed_dict=feed)
                avg_cost += c / steps
            train_seconds += time.perf_counter() - tick
            done += steps
            epoch += 1
            print(f"Epoch: {epoch:04d} cost = {avg_cost:.9f}", flush=True)
        print("Learning Finished!", flush=True)

        # Test accuracy in batches, dropout off (keep_prob 1.0)
        hits = 0.0
        for start in range(0, len(test_x), 1000):
            feed = {X: test_x[start:start + 1000], Y: test_y[start:start + 1000], keep_prob: 1.0}
            hits += sess.run(correct, feed_dict=feed)
        accuracy = hits / len(test_x)
        print(f"Accuracy: {accuracy:.4f}", flush=True)

    images_per_second = total_steps * BATCH_SIZE / train_seconds
    print(f"RESULT model={args.model} epochs={args.epochs:g} train_seconds={train_seconds:.2f} "
          f"images_per_second={images_per_second:.0f} test_accuracy={accuracy:.4f} "
          f"process_seconds={time.perf_counter() - STARTED:.1f}", flush=True)


if __name__ == "__main__":
    main()
