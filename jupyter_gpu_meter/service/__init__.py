"""The meter service: a Tornado app the hub runs as the managed service ``gpu-meter``."""

from .app import MeterService
from .web import create_application

__all__ = ["MeterService", "create_application"]
