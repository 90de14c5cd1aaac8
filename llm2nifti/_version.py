"""The package version, on the ground floor so every module can read it without importing the package."""

__version__ = "0.2.0"
