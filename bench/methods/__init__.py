"""The torch side of each method: what the child runs for a cell's recipe.

- ``training``   model, method, precision, optimizer, timed steps (``train`` cells)
- ``generation`` ``generate()`` with a KV cache (``infer`` cells)
- ``adapters``   LoRA / QLoRA through PEFT
- ``parallel``   process group, DDP, DeepSpeed ZeRO, FSDP2
- ``optimizers`` the optimizer a recipe names
- ``ranks``      rank, local rank, world size (a one-rank world without torchrun)

Every decision the predictor also models (dtypes, where the model is built,
adapters, optimizer flavour, what the loop holds) is read from
``bench.recipe``, never re-derived here.
"""
