"""The reviewer's report of a run and what it shows: the paper's figures (``figures``), one
self-contained HTML page (``page``), the provenance of the run (``provenance``), headless
Chromium to render the page (``browser``), the stages of a run (``stages``: their order, stamps
and timings) and the runner that runs them as subprocesses (``run``, for ``reproduce demo``).

Layers: this package reads ``stats`` (the numbers, e.g. ``stats.table``'s table.csv schema) and
``data``; ``stats`` never imports it, so the numbers are usable without matplotlib or HTML.
"""
