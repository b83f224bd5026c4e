"""What a person looks at: figures, report tables, the self-contained HTML report and
the QGIS project of a run folder."""

from metalsm.report._qgis import ProjectLayer, write_qgis_project

__all__ = ["ProjectLayer", "write_qgis_project"]
