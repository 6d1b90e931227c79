"""bench: measure and predict the GPU memory and speed of LLM fine-tuning and serving.

The package is laid out one concept per module:

- ``cell``      a normalized benchmark cell (model x method x precision x shape)
- ``matrix``    matrix YAML files: expansion, overrides, validation
- ``models``    the model catalog (shipped configs; never a download)
- ``gpus``      the GPU catalog
- ``dsconfig``  DeepSpeed JSON configs, read the way DeepSpeed reads them
- ``store``     the results store (one JSON file per cell, atomic writes)
- ``predict``   the memory predictor (``bench predict`` / ``bench plan``)
- ``run``       the runner: one fresh child process per cell
- ``report``    tables, plots and comparisons of results
"""

__version__ = "0.1.0"
