"""The locust reboot storm: simulated zincati nodes, an independent safety record."""
