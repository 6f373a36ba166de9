"""How part files are cut: output.max_rows_per_file, output.row_group_rows, output.compression.

A task writes one file per partition unless max_rows_per_file cuts it into numbered files; which
rows a task owns does not change, so exactly-once stays per task (its done marker names every
file). The choices join the run's fingerprint when not the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from pipelines.config import OutputConfig


@dataclass(frozen=True)
class FileSizing:
    """How part files are cut: output.max_rows_per_file (None: one file per task and
    partition), output.row_group_rows (None: pyarrow's default, 1 Mi rows) and the codec."""

    max_rows_per_file: int | None = None
    row_group_rows: int | None = None
    compression: str = "zstd"

    @classmethod
    def of(cls, out: OutputConfig) -> FileSizing:
        return cls(out.max_rows_per_file, out.row_group_rows, out.compression)

    @property
    def is_default(self) -> bool:
        return self == FileSizing()

    def pieces(self, table: pa.Table) -> list[pa.Table]:
        """The table cut into files of at most max_rows_per_file rows, in order."""
        most = self.max_rows_per_file
        if most is None or table.num_rows <= most:
            return [table]
        return [table.slice(start, most) for start in range(0, table.num_rows, most)]
