from . import distillation  # noqa: F401  (registers all criterion names)
