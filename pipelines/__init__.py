"""Pipelines: the top layer, which nothing imports.

Owns one thin script per DVC stage, the params root (``pipelines.params``), the stage wrapper
(``pipelines.stage``), the ``mixdistill`` CLI, lineage, and the run-logging seam
(``pipelines.tracking``), the only module that imports mlflow. It imports every package below it.
"""
