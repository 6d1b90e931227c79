"""``bench run``: measure cells, one fresh child process per cell.

The parent (never imports torch):

- ``cli``        the ``run`` verb and its flags
- ``runner``     the loop: validate, resume, predict, run, persist each record
- ``executor``   ``Job``, the ``Executor`` protocol, ``LocalExecutor`` (children on this host)
- ``outcome``    a child's end -> ``ok`` / ``oom`` / ``timeout`` / ``error``
- ``record``     the store record of a cell, prediction error included
- ``maxbatch``   ``--find-max-batch`` bisection
- ``prediction`` the predictor's answers, when it is installed
- ``progress``   per-cell lines and the ETA bar
- ``machine``    GPUs, driver, versions, git commit (``machine.json``)

The child (``python -m bench.run.worker JOB.json OUT.json``):

- ``worker``     one cell: sampler, memory cap, run, ``OUT.json``
- ``training`` / ``generation``   the measured steps of ``train`` / ``infer`` cells
- ``adapters``   LoRA / QLoRA;  ``parallel``  DDP, DeepSpeed ZeRO, FSDP2;  ``optimizers``
- ``ranks``      rank, local rank, world size (a one-rank world without torchrun)
- ``nvml``       the 10 ms memory sampler;  ``procmem``  host memory from ``/proc``
- ``flops``      achieved model FLOPs and MFU
"""
