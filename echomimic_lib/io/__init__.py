"""Files in and out: weight files (read, convert), the allow-list unpickler, video and audio reading,
the streaming MP4 writer."""
