from . import speech_to_text_kd  # noqa: F401  (registers the task)
