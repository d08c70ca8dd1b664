"""A DataTable rebuilt from each fresh status, keeping the cursor on the same row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual import events
from textual.coordinate import Coordinate
from textual.widgets import DataTable

Row = tuple[str, Sequence[Text]]


class LiveTable(DataTable):
    """Base of the Models and Nodes tables: fixed columns, rows replaced wholesale.

    Rows are rebuilt only when `signature` (the data they show) changes, so a poll
    that brings nothing new does not move the cursor or redraw. The `FLEX` column
    takes the width the others leave, so wide terminals show whole model names.
    """

    COLUMNS: ClassVar[tuple[tuple[str, int], ...]] = ()
    """(label, minimum width) of each column."""
    FLEX: ClassVar[str] = ""
    """Label of the column that grows with the terminal."""
    FLEX_MAX: ClassVar[int] = 60

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._signature: Any = object()
        self.widths: dict[str, int] = dict(self.COLUMNS)

    def on_mount(self) -> None:
        """Set up the columns."""
        self._add_columns()

    def on_resize(self, _: events.Resize) -> None:
        """Give the flexible column the room there is."""
        widths = self._fit_widths()
        if widths != self.widths:
            self.widths = widths
            self.clear(columns=True)
            self._add_columns()
            self._signature = object()
            self.refresh_rows()

    def _add_columns(self) -> None:
        for label, _ in self.COLUMNS:
            self.add_column(label, width=self.widths[label], key=label.lower())

    def _fit_widths(self) -> dict[str, int]:
        widths = dict(self.COLUMNS)
        if self.FLEX:
            taken = sum(w for label, w in self.COLUMNS if label != self.FLEX)
            taken += 2 * self.cell_padding * len(self.COLUMNS) + 1  # + 1: the scrollbar
            room = self.size.width - taken
            widths[self.FLEX] = min(max(widths[self.FLEX], room), self.FLEX_MAX)
        return widths

    def refresh_rows(self) -> None:
        """Render the rows again from the data last shown (after a change of widths)."""

    @property
    def cursor_key(self) -> str | None:
        """Key of the row under the cursor."""
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(Coordinate(self.cursor_row, 0)).row_key.value

    def replace_rows(self, rows: Sequence[Row], signature: Any) -> None:
        """Show `rows` (key, cells) unless `signature` says they are already shown."""
        if signature == self._signature:
            return
        self._signature = signature
        selected = self.cursor_key
        self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=key)
        keys = [key for key, _ in rows]
        if selected in keys:
            self.move_cursor(row=keys.index(selected), animate=False)
