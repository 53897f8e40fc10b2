"""Using a trained network: probabilities and metrics (`evaluation.py`), reading photos of digits
(`predict.py`) and of numbers (`numbers.py`), ensembles averaged (`ensemble.py`), "not a digit"
(`novelty.py`), calibration (`calibration.py`), ONNX export (`export.py`) and plots of a model
(`plots.py`).

May import the layers below (`errors`, `files`, `data`, `images`, `models`, `runtime`) and this
package, never `mnist_cnn.training`: reading one photo must not load the training loop or tqdm
(tests/test_layers.py checks it).
"""
