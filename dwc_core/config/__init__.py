"""experiments.yaml → validated, frozen run configs (``experiments``), and the typed option schema (``schema``)."""
