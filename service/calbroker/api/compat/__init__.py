"""Compatibility surfaces: other vendors' APIs answered by calbroker's own services."""
