"""Service files shipped with the package: dcam-edge.service (systemd unit), edge.toml (example
config) and install.sh.  install.sh finds them via ``edge.service.__file__`` after ``pip install``."""
