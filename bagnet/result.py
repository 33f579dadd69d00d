"""What an experiment returns: tables, figures and JSON-able raw numbers. Writing them is bagnet.io's job."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

import pandas as pd

# Text that may quote the run's provenance (wall time, device, commit): a string or a function of it.
Text = Union[str, Callable[[dict], str]]


@dataclass
class Result:
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)   # name -> table (CSV + Markdown)
    figures: dict[str, Any] = field(default_factory=dict)           # name -> matplotlib Figure (PNG + PDF)
    raw: dict[str, Any] = field(default_factory=dict)               # JSON-serialisable numbers
    summary: str = ""                                               # one line for the log
    header: Text = ""                                               # paragraph above each Markdown table
    parts: dict[str, "Result"] = field(default_factory=dict)        # sub-results, one folder each
    readme: Text = ""                                               # README.md of the output folder
    units: dict[str, Any] = field(default_factory=dict)             # stored unit -> the commit that computed it

    def is_empty(self) -> bool:
        return not (self.tables or self.figures or self.raw or self.parts or self.readme)
