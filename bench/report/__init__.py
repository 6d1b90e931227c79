"""Reports of results: tables, plots and comparisons, all pure functions of records.

- ``table``      the table model: records -> sorted, formatted rows (``measured`` or ``plan`` mode)
- ``labels``     how fields and numbers read (GiB, %, ``1.5B``, method names)
- ``footnotes``  units, measurement method and environment under every table
- ``catalog``    the model and GPU facts a table needs (parameter counts, GPU memory)
- ``markdown``, ``html``, ``csv``  exporters; ``plots`` the three HTML figures
- ``render``     entry points: ``render(records, fmt)``, ``render_plan(records, fmt)``
- ``compare``    cell-by-cell comparison of two result sets with thresholds
- ``cli``        the ``report`` and ``compare`` verbs
"""

from bench.report.render import FORMATS, plan_record, render, render_plan

__all__ = ["FORMATS", "plan_record", "render", "render_plan"]
