"""lockd: a FleetLock reboot-coordination server."""

__version__ = "0.1.0"
