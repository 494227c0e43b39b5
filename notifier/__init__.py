"""notifier: e-mail alerts for NAS boxes and Linux servers."""

__version__ = "0.1.0"
