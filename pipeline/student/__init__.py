"""A student run's parts: model and optimizer setup, the teacher, epoch data, the step and evaluation."""
