"""The TEA model (EMB plus the video-narrative merge and the paragraph-query branch), module by module."""
