"""The MLLM video narrator: narrators (models), generation (the fast greedy decoder), pipeline (the
resumable narrate stages), outputs (files, merge), devices (one worker per GPU), cli (commands)."""
