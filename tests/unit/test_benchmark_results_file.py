"""Benchmark results files: a rerun's --write replaces the tables and keeps the hand-written notes."""

from __future__ import annotations

from benchmarks.results_file import write_keeping_notes


def test_a_rewrite_keeps_everything_from_the_notes_marker_on(tmp_path):
    path = tmp_path / "results" / "quality.md"
    write_keeping_notes(path, "# Table\n\n| a | 1 |\n")
    assert path.read_text() == "# Table\n\n| a | 1 |\n"  # no marker yet: the text alone
    notes = "<!-- notes: written by hand, kept when quality.py --write rewrites the tables above -->\n\nWhy 1.\n"
    path.write_text(path.read_text() + "\n" + notes)
    write_keeping_notes(path, "# Table\n\n| a | 2 |\n")
    assert path.read_text() == "# Table\n\n| a | 2 |\n\n" + notes
