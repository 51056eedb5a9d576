"""Export a frame (cases, tool calls, a comparison) as CSV or Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import pandas as pd

from medagent.errors import ConfigurationError, MissingDependency
from medagent.files import replacing

ExportFormat = Literal["csv", "parquet"]


def export(frame: pd.DataFrame, path: Path | str, format: ExportFormat = "csv") -> Path:  # 'format': the CLI's word
    """Write ``frame`` (without its index) to ``path``; the file appears whole or not at all.

    CSV is UTF-8 with a header row, nulls as empty fields. Parquet goes through pyarrow (the
    ``reports`` extra) and keeps dtypes. Writing to a temporary file in the same folder and
    renaming it means a crash never leaves a half-written export behind.
    """
    if format not in get_args(ExportFormat):
        raise ConfigurationError(f"unknown export format {format!r}; use one of {', '.join(get_args(ExportFormat))}")
    path = Path(path)
    with replacing(path) as temporary:
        if format == "csv":
            frame.to_csv(temporary, index=False, encoding="utf-8")
        else:
            try:
                import pyarrow  # noqa: F401 - fail with a clear message, not pandas' generic one
            except ImportError as exc:
                raise MissingDependency("Parquet export needs pyarrow: install medagent[reports]") from exc
            frame.to_parquet(temporary, index=False, engine="pyarrow")
    return path
