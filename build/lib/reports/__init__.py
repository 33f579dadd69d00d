"""The rendered documents: the number blocks of README.md and results/README.md, read back from the committed
result files (``make render-results``; scripts/render_results.py).

* :mod:`reports.readings` the blocks (tables, the headline) and the check for hand-written numbers
* :mod:`reports.verdicts` each claim of the paper and the report with its verdict and interval
* :mod:`reports.files`    reading the result files (``raw.json``) back, formatting their numbers

Layering: reports read bagnet/ and experiments/ (published numbers, column names); neither imports reports.
"""
