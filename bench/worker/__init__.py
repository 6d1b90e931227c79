"""The child that measures one cell (``python -m bench.worker.child JOB.json OUT.json``).

- ``child``      one cell: sampler, memory cap, run (``bench.methods``), ``OUT.json``
- ``nvml``       the 10 ms NVML memory sampler
- ``procmem``    host memory from ``/proc``
- ``flops``      achieved model FLOPs and MFU
- ``peak``       ``python -m bench.worker.peak``: what is alive at a cell's peak

It imports nothing of the parent's executors (``bench.run``).
"""
