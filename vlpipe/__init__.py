"""vlpipe: training-free open-ended perception as a DAG of swappable nodes."""

__version__ = "0.1.0"
