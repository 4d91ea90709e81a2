"""vgen: stamp out and run a fleet of small vertical Flask + SQLite apps."""

__version__ = "0.1.0"
