"""The TEA model (EMB, the video-narrative merge, the paragraph-query branch), module by module."""
