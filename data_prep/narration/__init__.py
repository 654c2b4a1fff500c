"""The MLLM video narrator: frame sampling, the narrator models and the resumable narrate command."""
