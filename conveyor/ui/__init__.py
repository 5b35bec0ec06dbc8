"""Conveyor's read-only web UI and the HTML report."""

__all__: list[str] = []
