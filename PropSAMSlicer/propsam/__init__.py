"""PropSAM engine: one-view prompt 3D segmentation by slice propagation.

Importable without Slicer or Qt; the Slicer module, the CLI, tests and benchmarks all use it.
"""

__version__ = "0.1.0"
