"""Reports of results: tables, plots and comparisons, all pure functions of records.

- ``table``      the table model: records -> sorted, formatted rows (``measured`` or ``plan`` mode)
- ``labels``     how fields and numbers read (GiB, %, ``1.5B``, method names)
- ``footnotes``  units, measurement method and environment under every table
- ``catalog``    the model and GPU facts a table needs (parameter counts, GPU memory)
- ``markdown``, ``html``, ``csv``  exporters; ``plots`` the HTML figures, ``interactive`` the
                 table's sorting and filtering script
- ``render``     entry points: ``render(records, fmt)``, ``render_plan(records, fmt)``,
                 ``render_html(records, title)`` (the page a results folder is served as)
- ``hardware``   emulated, CPU and GPU runs: what a row's hardware and speed columns say
- ``freshness``  stale predictions (another predictor version), predicted afresh
- ``breakdown``  the per-part stacked bars (predicted next to measured) against the card
- ``compare``    cell-by-cell comparison of two result sets with thresholds
- ``cli``        the ``report`` and ``compare`` verbs
"""

from bench.report.render import FORMATS, PLAN_FORMATS, plan_record, render, render_html, render_plan

__all__ = ["FORMATS", "PLAN_FORMATS", "plan_record", "render", "render_html", "render_plan"]
