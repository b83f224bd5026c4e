"""metalsm: landslide susceptibility mapping on real GIS data."""

__version__ = "0.1.0"
