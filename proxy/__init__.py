"""serving-sidecar: local gateway to Databricks route-optimized model serving."""

__version__ = "0.1.0"
