"""Section builders: each turns the lineage into one :class:`~cxrjepa.report.doc.Section`."""
