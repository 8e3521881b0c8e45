"""A tally of what the data readers read and what they dropped, and why.

Every filter in recray's readers goes through `DataReport.drop`, so that no row
disappears without a count and a reason. The job writes `DataReport.to_dict()`
into the run folder as `data_report.json` and logs `DataReport.log_summary`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class DataReport:
    """Rows read per file and rows dropped per file and reason.

    A reason that ends in "field emptied" counts rows whose field was emptied
    while the row itself was kept (a malformed TMDB JSON cell, for instance);
    every other reason counts rows that were removed.

    Attributes:
        rows_read: Data rows read per file name, header excluded.
        dropped: Rows dropped per (file name, reason).
        examples: The first dropped row seen per (file name, reason), as text,
            so that a person can find it in the file.
        dataset: What was read, e.g. the MovieLens layout and whether the
            data is synthetic; in `to_dict` only when set.
    """

    rows_read: dict[str, int] = field(default_factory=dict)
    dropped: dict[tuple[str, str], int] = field(default_factory=dict)
    examples: dict[tuple[str, str], str] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)

    def read(self, file: str, count: int) -> None:
        """Add `count` data rows read from `file`."""
        self.rows_read[file] = self.rows_read.get(file, 0) + count

    def drop(
        self, file: str, reason: str, count: int, example: str | None = None
    ) -> None:
        """Add `count` rows of `file` dropped for `reason`; a zero count is ignored.

        Args:
            file: File name the rows came from, e.g. `ratings.csv`.
            reason: Why they were dropped, in words a person can act on.
            count: Number of rows dropped.
            example: One dropped row as text; only the first one is kept.

        Raises:
            ValueError: `count` is negative.
        """
        if count < 0:
            raise ValueError(
                f"Drop count for `{file}` ({reason}) must be >= 0, got {count}."
            )
        if count == 0:
            return
        key = (file, reason)
        self.dropped[key] = self.dropped.get(key, 0) + count
        if example is not None:
            self.examples.setdefault(key, example)
        logger.debug("%s: dropped %d rows: %s", file, count, reason)

    def total_dropped(self) -> int:
        """Return the number of drops over all files and reasons."""
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-safe values, for `data_report.json`."""
        dataset = {"dataset": dict(self.dataset)} if self.dataset else {}
        return {
            **dataset,
            "rows_read": dict(self.rows_read),
            "dropped": [
                {
                    "file": file,
                    "reason": reason,
                    "count": count,
                    "example": self.examples.get((file, reason)),
                }
                for (file, reason), count in self.dropped.items()
            ],
            "total_dropped": self.total_dropped(),
        }

    def log_summary(self, logger: logging.Logger) -> None:
        """Log one WARNING line per drop reason and the totals at INFO.

        Args:
            logger: Logger of the caller, so the lines carry its name.
        """
        for (file, reason), count in self.dropped.items():
            example = self.examples.get((file, reason))
            suffix = f" (first: {example})" if example else ""
            logger.warning("%s: dropped %d: %s%s", file, count, reason, suffix)
        logger.info(
            "Data report: read %d rows from %d files, dropped %d.",
            sum(self.rows_read.values()),
            len(self.rows_read),
            self.total_dropped(),
        )
