"""Readers of other tools' job files, one module per tool (see ``bench.jobfile``).

Each module has ``read(path, doc) -> Job``: the keys that map to cell fields,
the memory- or time-relevant keys bench does not model (each a note), and the
keys it knows to be irrelevant to memory, written from the tool's own
documentation (``TrainingArguments`` fields, the DeepSpeed config JSON
reference, axolotl's config reference, LLaMA-Factory's argument classes, accelerate's
``ClusterConfig`` and plugins).
"""
