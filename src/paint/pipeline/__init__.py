"""The pipeline layer: run directories, the task pool, the patch operation, multi-task modes, reports."""
