"""Synthetic demo data: chest radiograph phantoms (and ultrasound cines) written as a DICOM archive."""

from cxrjepa.demo.api import DemoConfig, findings_for, plan_cases, render_case, run_demo, storage_for

__all__ = ["DemoConfig", "findings_for", "plan_cases", "render_case", "run_demo", "storage_for"]
