"""What an experiment returns: tables, figures and JSON-able raw numbers. Writing them is bagnet.io's job."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass
class Result:
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)   # name -> table (CSV + Markdown)
    figures: dict[str, Any] = field(default_factory=dict)           # name -> matplotlib Figure (PNG + PDF)
    raw: dict[str, Any] = field(default_factory=dict)               # JSON-serialisable numbers
    summary: str = ""                                               # one line for the log

    def merge(self, other: "Result", prefix: str = "") -> "Result":
        self.tables.update({prefix + k: v for k, v in other.tables.items()})
        self.figures.update({prefix + k: v for k, v in other.figures.items()})
        self.raw.update({prefix + k: v for k, v in other.raw.items()})
        return self
