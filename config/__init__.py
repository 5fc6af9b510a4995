"""Data only: the default service settings (``service.toml``) and the camera presets (``cameras/*.toml``)."""
