"""Synthetic demo data: chest radiograph phantoms (and ultrasound cines) written as a DICOM archive."""

from cxrjepa.demo.api import DemoConfig, plan_cases, render_case, run_demo

__all__ = ["DemoConfig", "plan_cases", "render_case", "run_demo"]
