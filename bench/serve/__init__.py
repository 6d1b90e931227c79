"""``bench serve``: a local web calculator over the warm predictor.

One process keeps the predictor's imports and trace caches in memory and
answers a page and a JSON API on 127.0.0.1:

- ``cli``: the verb (``bench serve [--host] [--port] [--results DIR ...] [--root-path /prefix]``);
- ``app``: the routes (page, catalogs, predict, cards, command, upload, results);
- ``calculator``: cell fields in, ``bench plan --json`` entries out, one
  prediction at a time (the tracer uses global torch state), answers cached;
- ``uploads``: the files a browser sends (a ``config.json``, a DeepSpeed JSON,
  a training config), kept in a temporary folder, the only files the server reads by path;
- ``equivalent``: the ``bench predict`` command and the matrix YAML of a cell;
- ``page.html``: the one self-contained page (inline CSS and script, nothing fetched).
"""
