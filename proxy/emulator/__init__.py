"""Emulated Databricks workspace: control plane, data plane and fault knobs."""
