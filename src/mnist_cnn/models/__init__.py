"""The networks and what describes one: their names, their recipes, and the checkpoint file.

- `catalog.py`: each network's name and description, readable without importing torch.
- `recipes.py`: a `Recipe`, the settings a network is trained with (every network is registered
  with its default recipe, so recipes live here, below training).
- `registry.py`: every network by name with its default recipe; `build_model`, `as_input`.
- `layers.py`: the layers the networks are built from.
- the families, one file each: `lecture.py` (simple, deep), `fast.py`, `best.py` (best, wide,
  five), `views.py` (best on deskewed or width-normalised input: upright, widthnorm, views,
  upright-widthnorm).
- `summary.py`: each layer's output shape and parameters, in the lecture's notation.
- `checkpoint.py`: a trained network on disk (safetensors and checked metadata), read and written
  here because inference reads what training writes.

May import: `mnist_cnn.errors`, `mnist_cnn.files`, `mnist_cnn.data`, `mnist_cnn.images` and this
package; nothing of the runtime, inference or training.
"""
