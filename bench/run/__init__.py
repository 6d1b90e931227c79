"""``bench run``, the parent: it never imports torch.

- ``cli``        the ``run`` verb and its flags
- ``runner``     the loop: validate, resume, predict, run, persist each record
- ``executor``   ``Job``, the ``Executor`` protocol, ``LocalExecutor`` (children on this host)
- ``ray_executor`` one Ray task per cell on an existing cluster
- ``outcome``    a child's end -> a status (``bench.status``)
- ``record``     the store record of a cell, prediction error included
- ``maxbatch``   ``--find-max-batch`` bisection
- ``prediction`` the predictor's answers, in a background process
- ``progress``   per-cell lines and the tqdm bar with ETA
- ``machine``    GPUs, driver, versions, git commit (``machine.json``)

Each cell runs in a fresh child, ``python -m bench.worker.child JOB.json
OUT.json`` (``bench.worker``), which trains or generates with the torch side
of the cell's method (``bench.methods``); both follow the cell's
``bench.recipe``.
"""
